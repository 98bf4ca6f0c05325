"""Baselines that train the backbone: fine-tuning, training from scratch, and Head2Toe-FT.

Head2Toe-FT (Evci et al. 2022, Sec. 4) fine-tunes the backbone *and* the Head2Toe head on the selected
features of every layer. Its tree follows the SplitModel layout: `extractor` is the whole source network
(every layer feeds the head, its own classifier included), `head` the linear head {'w', 'b'} over all D
columns, which sees each layer's kept subset re-normalised as Head2Toe's refit does; the kept-feature mask is model state beside the BatchNorm statistics
(`{'extractor': {'batch_stats': ...}, 'head': {'feature_mask': [D]}}`), so tasks with the same shapes
share one compiled step.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from modular import data, losses, models, params as P, supervised, train
from modular.methods.head2toe import grid
from modular.methods.head2toe.features import features_fn

# The task classifier never transfers: its label space is the source's.
FRESH_CLASSIFIER = (r".*/classifier/.*",)


def _batches(ds: data.Dataset, batch_size: int, seed: int):
    return lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed)


def train_model(ds: data.Dataset, *, model_cfg, optim_cfg, num_steps: int, batch_size: int, seed: int = 0,
                init_from: dict | None = None, name: str = "finetune") -> tuple[float, float, int]:
    """Train all weights (from `init_from` variables, or from scratch); returns (test accuracy, seconds, params)."""
    model = models.build(model_cfg, ds.num_classes)
    variables = models.init(model, jax.random.key(seed), (1,) + tuple(ds.image_shape))
    if init_from is not None:
        variables = P.load_matching(variables, init_from, dont_load=FRESH_CLASSIFIER)
    params, model_state = models.split_variables(variables)
    trained = train.train_subtrees(params, model_state, loss_fn=supervised.classification_loss(model),
                                   optim_cfg=optim_cfg, rules=[], default_mult=1.0,
                                   batch_fn=_batches(ds, batch_size, seed), num_steps=num_steps, seed=seed,
                                   name=name, verbose=False, log_every=max(num_steps, 1))
    variables = {"params": trained.params, **trained.model_state}
    accuracy = train.accuracy(supervised.model_logits(model), variables, ds.test_images, ds.test_labels)
    return accuracy, trained.fit.seconds, P.count(params)


def masked_logits(features: jax.Array, head: dict, feature_mask: jax.Array, slices: tuple) -> jax.Array:
    """The Head2Toe head on the kept columns only, each layer's kept subset re-normalised as in the refit
    (masked columns get no gradient, their rows stay as they are)."""
    return grid.logits(head, features, feature_mask, slices, renormalise=True)


@functools.lru_cache(maxsize=16)
def head2toe_ft_loss(model, layer_names: tuple, target: int, slices: tuple):
    """loss_fn for train_subtrees on a Head2Toe-FT tree: cross-entropy of the masked head, BN in train mode."""
    features = features_fn(model, layer_names, target, "train")

    def loss_fn(params, state, batch, rng):
        x, backbone_state = features({"params": params["extractor"], **state["extractor"]}, batch["image"])
        logits = masked_logits(x, params["head"], state["head"]["feature_mask"], slices)
        return losses.cross_entropy(logits, batch["label"]), (
            dict(state, extractor=backbone_state), {"accuracy": losses.accuracy(logits, batch["label"])})
    return loss_fn


def head2toe_ft(ds: data.Dataset, clf: supervised.Classifier, *, layers: dict, mask: np.ndarray, head: dict,
                target: int, optim_cfg, num_steps: int, batch_size: int, seed: int = 0) -> tuple[float, float]:
    """Fine-tune the source backbone and the Head2Toe head together, starting from that head, on the
    features of `layers` (a FeatureCache's column layout) kept by `mask`. Returns (test accuracy, seconds)."""
    layer_names = tuple(layers)
    slices = tuple(tuple(int(i) for i in layers[n]) for n in layer_names)
    params = {"extractor": clf.variables["params"], "head": {"w": np.asarray(head["w"]), "b": np.asarray(head["b"])}}
    state = {"extractor": models.split_variables(clf.variables)[1],
             "head": {"feature_mask": np.asarray(mask, np.float32)}}
    trained = train.train_subtrees(params, state, loss_fn=head2toe_ft_loss(clf.model, layer_names, target, slices),
                                   optim_cfg=optim_cfg, rules=[], default_mult=1.0,
                                   batch_fn=_batches(ds, batch_size, seed), num_steps=num_steps, seed=seed,
                                   name="head2toe_ft", verbose=False, log_every=max(num_steps, 1))
    variables = ({"params": trained.params["extractor"], **trained.model_state["extractor"]},
                 trained.params["head"], trained.model_state["head"]["feature_mask"])
    accuracy = train.accuracy(_head2toe_ft_eval(clf.model, layer_names, target, slices), variables,
                              ds.test_images, ds.test_labels)
    return accuracy, trained.fit.seconds


@functools.lru_cache(maxsize=16)
def _head2toe_ft_eval(model, layer_names: tuple, target: int, slices: tuple):
    features = features_fn(model, layer_names, target, "eval")
    return lambda v, b: masked_logits(features(v[0], b["image"])[0], v[1], v[2], slices)
