"""Head2Toe (Evci et al. 2022) in one import: features from every layer, group-lasso selection, CV.

The pieces live one concern per file: `head2toe_features` (pooling, normalisation, the feature cache),
`head2toe_heads` (linear heads and regularisers), `head2toe_select` (selection and cross-validation),
`head2toe_suite` (the offline VTAB-1k-like targets) and `head2toe_finetune` (backbone-training baselines).
"""
from modular.methods.head2toe_features import (FeatureCache, cache_features, l2_normalise, pool_layer,  # noqa: F401
                                               pool_size)
from modular.methods.head2toe_heads import head_accuracy, relevance, train_linear  # noqa: F401
from modular.methods.head2toe_select import (cross_validate, head2toe, layerwise_mask,  # noqa: F401
                                             top_fraction_mask)
