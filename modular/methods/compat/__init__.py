"""Compatible components (Gygli, Uijlings & Ferrari 2020): train two networks so that the extractor of one
works with the head of the other, then measure that by recombining them without fine-tuning.

Three ingredients make components compatible:
- DCC: a head shared by both networks, trained on the classes their tasks have in common;
- RP: a shared head predicting the rotation (0/90/180/270) of rotated copies of the input;
- IIW: both networks start from the same initial weights.

A pair lives in the library's multi-task layout (BatchNorm statistics in a tree of the same shape):
`{"shared": {"dcc", "rp"}, "tasks": {"a": {"extractor", "head"}, "b": {...}}}`.

  modules.py    the Flax modules, the pair's variables, BatchNorm-mode forward passes
  losses.py     task + DCC + RP objectives, the rotation loss for adaptation, common classes
  schedule.py   settings (DCC/RP/IIW), options, summed-step joint/incremental training: `train_pair` -> `Pair`
  pretext.py    RP's transforms (rotation; rotation + mirror as a harder pretext)
  optimizer.py  one part's optimiser (the paper's Adam + L2 weight decay; step decay from modular.optim)
  pretrain.py   the extractor that pretrained-IIW settings start both networks from
  members.py    variants x seeds in one compiled program, the networks' minibatches alternating
  sweep.py      validation curves while training, the step count chosen on them, test metrics once
  similarity.py linear CKA and per-unit correlation between two extractors (App. C.2)
  study.py      Fig. 2 with its controls over seeds; claims.py the claims judged from intervals
  recombine.py  the recombination protocol (`evaluate`) and the paper's Fig. 2
  uda.py        domain adaptation through the frozen RP head, with a BN-statistics control
  transfer.py   fast transfer: recombination (RP-only incremental) starts fine-tuning vs a fresh head
  head_update.py  a new head trained on a frozen reference extractor, moved to another architecture
  apps.py       the three applications run on every seed
  report.py     tables and plots
"""
from modular.methods.compat import apps, claims, head_update, members, pretext, report, similarity, study, sweep
from modular.methods.compat.apps import APPLICATIONS, PAPER_APPLICATIONS
from modular.methods.compat.losses import (common_label_map, make_loss_fn, make_rp_adaptation_loss,
                                           resolve_common_classes)
from modular.methods.compat.modules import (AdaptedExtractor, CompatModules, build_modules, init_variables,
                                            run_module)
from modular.methods.compat.recombine import (PAPER_FIG2, SUMMARY_KEYS, evaluate, recombination_accuracy,
                                              recombine_trees, recombined_logits, summary, task_accuracy,
                                              train_and_evaluate)
from modular.methods.compat.schedule import (SCHEDULES, SETTINGS, Pair, check_options, default_options,
                                             parse_setting, phases, setting_name, train_pair)
from modular.methods.compat.transfer import fast_transfer, transfer_head, with_fresh_head
from modular.methods.compat.uda import (adapt_extractor_rp, reestimate_extractor_stats, rotation_accuracy,
                                        run_uda)

__all__ = [
    # training a pair
    "default_options", "check_options", "SCHEDULES", "SETTINGS", "setting_name", "parse_setting", "phases",
    "train_pair", "Pair",
    # evaluating it
    "PAPER_FIG2", "SUMMARY_KEYS", "evaluate", "train_and_evaluate", "summary", "recombined_logits",
    "recombination_accuracy", "task_accuracy", "recombine_trees",
    # building blocks
    "CompatModules", "AdaptedExtractor", "build_modules", "init_variables", "run_module",
    "make_loss_fn", "make_rp_adaptation_loss", "common_label_map", "resolve_common_classes",
    # applications (paper Sec. 5) and studies
    "APPLICATIONS", "PAPER_APPLICATIONS", "run_uda", "adapt_extractor_rp", "reestimate_extractor_stats",
    "rotation_accuracy", "fast_transfer", "transfer_head", "with_fresh_head",
    "apps", "head_update", "report", "claims", "members", "pretext", "similarity", "study", "sweep",
]
