"""Compositional template mixtures (Zhmoginov, Sandler, Bashkirova): layers generated from shared templates.

An isometric network's L blocks all have one shape, so each task generates its block weights as mixtures
of K shared templates, theta_{t,l} = sum_k softmax(xi_{t,l})_k template_k (`modular.models.isometric`).
A task is then only its mixture logits xi [L, K], a BN patch and a head: tasks share the templates, a
new task trains on frozen templates, and adapting to a new domain can tune nothing but xi.

Trees: `{"shared": {templates, adapter_in, adapter_out}, "tasks": {"task0": {mixture, bn, head}, ...}}`
(BN statistics `{"tasks": {...}}`); what trains is a rule list over those paths.

  regularizers.py  entropy and clustering penalties on xi
  signatures.py    fixed one-hot signatures (sequential, cyclic, random) vs learned mixtures; runs and
                   progressiveness of an argmax signature
  multitask.py     the summed loss, rules, joint training (`Recipe`, `train_tasks`), evaluation, summaries
  transfer.py      a new task on frozen templates: the table of xi inits, interpolating the sources' xi
  adaptation.py    unsupervised adaptation of xi: moment matching, ADDA / gradient reversal, M3SDA
  discrepancy.py   M3SDA's two-classifier discrepancy and its three-step iteration
  bank.py          the task-bank adapter (`adapt_task`; its `prepare` trains the template bank on the source
                   once), add a task, export its private subtree
  study.py         the experiment over seeds: with vs without the regulariser, transfer from the regularised
                   sources, and the paper's claims decided by `modular.protocol`
  report.py        heatmaps and tables of the experiment
"""
from modular.methods.templates import report
from modular.methods.templates.adaptation import (METHODS as ADAPT_METHODS, Adversarial, adapt_unsupervised,
                                                  adversarial_loss, compare_adaptation, moment_distance,
                                                  moment_matching_loss)
from modular.methods.templates.discrepancy import M3SDA, classifier_discrepancy
from modular.methods.templates.bank import adapt, train_source
from modular.methods.templates.multitask import (Outcome, Recipe, compare_signatures, evaluate, multitask_loss,
                                                 multitask_rules, param_counts, summary, train_multitask,
                                                 train_tasks)
from modular.methods.templates.regularizers import clustering, entropy
from modular.methods.templates.signatures import SIGNATURES, signature
from modular.methods.templates.transfer import (TRANSFER_INITS, compare_transfer_inits, interpolate_logits,
                                                interpolation_weights, new_task_start, transfer_rules)

__all__ = [
    "entropy", "clustering", "SIGNATURES", "signature",
    "Recipe", "Outcome", "multitask_loss", "multitask_rules", "train_tasks", "evaluate", "summary", "param_counts",
    "train_multitask", "compare_signatures",
    "TRANSFER_INITS", "transfer_rules", "new_task_start", "interpolation_weights", "interpolate_logits",
    "compare_transfer_inits",
    "ADAPT_METHODS", "Adversarial", "moment_distance", "moment_matching_loss", "adversarial_loss",
    "adapt_unsupervised", "compare_adaptation", "M3SDA", "classifier_discrepancy",
    "train_source", "adapt", "report",
]
