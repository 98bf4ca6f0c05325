"""Head2Toe (Evci et al. 2022): a linear head on features selected from every layer of a frozen backbone.

Every activation is pooled to about T values and L2-normalised; a group-lasso (l2,1) head on all of them
scores each feature by the norm of its weight row; the top fraction F is kept and a fresh head trained on
it, with (F, coefficient, learning rate) chosen by k-fold cross-validation on the training set. The
backbone runs once per task (a feature cache), so adaptation never back-propagates through it.

  features.py  pooling, normalisation, the all-layer feature cache (and the same features, differentiable)
  heads.py     full-batch linear heads with l1 / l2 / l2,1 penalties, feature relevance (the bank adapter)
  grid.py      a whole hyperparameter grid of heads in one compiled program (vmap), per-layer re-normalisation
  select.py    feature-wise and layer-wise selection, Head2Toe itself, k-fold cross-validation
  finetune.py  baselines that train the backbone: fine-tuning, from scratch, Head2Toe-FT
  compare.py   the paper's per-target comparison: equal lr x steps grids, choices on validation, test once
  report.py    across targets and seeds: mean ± SE, the domain-affinity correlation, cost ratios, claims, figures
  adapter.py   Head2Toe as a task-bank entry (kept feature indices + head rows in one file)
"""
from modular.methods.head2toe.adapter import adapt
from modular.methods.head2toe.features import (FeatureCache, cache_features, features_fn, forward_order,
                                               l2_normalise, layer_features, pool_layer, pool_size, token_pool_size)
from modular.methods.head2toe.finetune import head2toe_ft, train_model
from modular.methods.head2toe.heads import REGULARISERS, head_accuracy, relevance, train_linear
from modular.methods.head2toe.compare import GRID_BOUNDS, METHODS, compare_on_task, grid_axes, settings_grids
from modular.methods.head2toe.grid import grid_accuracy, train_grid
from modular.methods.head2toe.report import (CORRELATION_NOTE, accuracy_table, claims, correlation, correlations,
                                             per_task_table, plots, summarize)
from modular.methods.head2toe.select import (cross_validate, feature_scores, fold_indices, head2toe, layerwise_mask,
                                             top_fraction_mask)

__all__ = [
    "GRID_BOUNDS",
    "pool_size", "token_pool_size", "pool_layer", "l2_normalise", "layer_features", "FeatureCache", "cache_features",
    "forward_order", "features_fn",
    "REGULARISERS", "train_linear", "head_accuracy", "relevance",
    "feature_scores", "top_fraction_mask", "layerwise_mask", "head2toe", "fold_indices", "cross_validate",
    "train_model", "head2toe_ft",
    "train_grid", "grid_accuracy",
    "METHODS", "compare_on_task", "grid_axes", "settings_grids",
    "summarize", "claims", "correlation", "correlations", "accuracy_table", "per_task_table", "plots",
    "CORRELATION_NOTE",
    "adapt",
]
