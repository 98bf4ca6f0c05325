"""Compatible components (Gygli, Uijlings & Ferrari 2020): train two networks so that the extractor of one
works with the head of the other, then measure that by recombining them without fine-tuning.

Three ingredients make components compatible:
- DCC: a head shared by both networks, trained on the classes their tasks have in common;
- RP: a shared head predicting the rotation (0/90/180/270) of rotated copies of the input;
- IIW: both networks start from the same initial weights.

A pair lives in the library's multi-task layout (BatchNorm statistics in a tree of the same shape):
`{"shared": {"dcc", "rp"}, "tasks": {"a": {"extractor", "head"}, "b": {...}}}`.

  model.py         the Flax modules and the pair's variables, BatchNorm-mode forward passes, RP's pretext
                   transforms (rotation; rotation + mirror), the task / RP-adaptation / rotation-pretraining losses
  training.py      settings (DCC/RP/IIW) and options, one part's optimiser (Adam + L2), the one training
                   implementation: variants x seeds as members of one compiled program, the networks' minibatches
                   alternating (`train_variants`; `train_pair` -> `Pair` for one pair), pretrained IIW's extractor
  recombine.py     the recombination protocol (`evaluate`), the paper's Fig. 2, feature similarity (CKA, App. C.2)
  study.py         Fig. 2 with its controls over seeds: variants, validation curves, the step choice, test metrics
  claims.py        the paper's claims judged from per-seed intervals
  applications.py  Sec. 5 on every seed: UDA through the frozen RP head, fast transfer, the head update across
                   architectures
  report.py        tables and plots
  pairs.py         one pair per setting, recombined: the study other experiments run by name (the tour's)
"""
from modular.methods.compat import applications, claims, model, recombine, report, study, training
from modular.methods.compat.applications import (APPLICATIONS, PAPER_APPLICATIONS, adapt_extractor_rp, fast_transfer,
                                                 reestimate_extractor_stats, rotation_accuracy, run_uda, transfer_head,
                                                 with_fresh_head)
from modular.methods.compat.model import (AdaptedExtractor, CompatModules, build_modules, common_label_map,
                                          init_variables, make_loss_fn, make_rp_adaptation_loss,
                                          resolve_common_classes, run_module)
from modular.methods.compat.recombine import (PAPER_FIG2, SUMMARY_KEYS, evaluate, linear_cka, recombination_accuracy,
                                              recombine_trees, recombined_logits, summary, task_accuracy,
                                              unit_correlation)
from modular.methods.compat.training import (SCHEDULES, SETTINGS, Pair, check_options, default_options, parse_setting,
                                             setting_name, train_and_evaluate, train_pair)

__all__ = [
    # training a pair
    "default_options", "check_options", "SCHEDULES", "SETTINGS", "setting_name", "parse_setting",
    "train_pair", "Pair",
    # evaluating it
    "PAPER_FIG2", "SUMMARY_KEYS", "evaluate", "train_and_evaluate", "summary", "recombined_logits",
    "recombination_accuracy", "task_accuracy", "recombine_trees", "linear_cka", "unit_correlation",
    # building blocks
    "CompatModules", "AdaptedExtractor", "build_modules", "init_variables", "run_module",
    "make_loss_fn", "make_rp_adaptation_loss", "common_label_map", "resolve_common_classes",
    # applications (paper Sec. 5) and studies
    "APPLICATIONS", "PAPER_APPLICATIONS", "run_uda", "adapt_extractor_rp", "reestimate_extractor_stats",
    "rotation_accuracy", "fast_transfer", "transfer_head", "with_fresh_head",
    "model", "training", "recombine", "study", "claims", "applications", "report",
]
