"""Model patches (Mudrakarta et al. 2018): a task is a small private subtree on a shared, frozen backbone.

A patch is a few parameter-tree rules: S/B (every BatchNorm scale and bias, with the task's own BN
statistics), DW (every depthwise kernel) and the last layer. A transfer mode trains some patches and
freezes the rest; the patch exports to a small file tagged with the backbone it fits. Many tasks share
one backbone (trained together or served together: one batch mixing tasks, one jitted call), and one
task seen at several resolutions gets an S/B patch per resolution and a confidence cascade.

  modes.py       transfer modes, their rules, splitting a model into backbone + patch, patch files
  transfer.py    source backbone + fresh head -> train the mode's patch; accuracy; the bank adapter
  multitask.py   {'shared', 'tasks': {'task0', ...}} trees, the summed loss, joint training
  serving.py     mixed-task batches in one jitted call (from trained trees or from bank files)
  multires.py    an S/B patch per input resolution and the cheapest-first cascade
  comparison.py  the multi-task table: sharing schemes vs independent models
  sweep.py       a mode's learning-rate grid in one compiled program, chosen on validation, then retrained
  summary.py     tables over seeds and the paper's claims judged from intervals
"""
from modular.methods.patches import multires, summary, sweep
from modular.methods.patches.comparison import compare_multitask
from modular.methods.patches.modes import (MODES, PAPER_MODES, TransferMode, apply_patch, check_applicable,
                                           export_patch, get_mode, import_patch, lr_rules, private_rules,
                                           split_private, stored_count)
from modular.methods.patches.multitask import init_multitask, per_task_count, task_variables, train_multitask
from modular.methods.patches.serving import make_mixed_server, serve_mixed, serve_mixed_batch, stack_patches
from modular.methods.patches.transfer import (accuracy, adapt, eval_logits, rebuilds_from_file, target_start,
                                             transfer)

__all__ = [
    "MODES", "PAPER_MODES", "TransferMode", "get_mode", "lr_rules", "private_rules", "check_applicable",
    "split_private", "stored_count", "apply_patch", "export_patch", "import_patch",
    "target_start", "transfer", "accuracy", "eval_logits", "adapt", "rebuilds_from_file",
    "init_multitask", "task_variables", "per_task_count", "train_multitask",
    "stack_patches", "make_mixed_server", "serve_mixed_batch", "serve_mixed",
    "compare_multitask", "multires", "summary", "sweep",
]
