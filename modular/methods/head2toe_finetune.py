"""Backbone-training baselines: fine-tune from the pretrained weights, or train the same model from scratch."""
from __future__ import annotations

import jax
import numpy as np

from modular import data, models, optim, params as P, supervised, train


def transplant(target: dict, source: dict, skip: str = "classifier") -> dict:
    """Copy every source leaf whose path and shape match the target's (except the task classifier)."""
    flat_t, flat_s = P.flatten(target), P.flatten(source)
    for path, leaf in flat_t.items():
        if skip not in path and path in flat_s and np.shape(flat_s[path]) == np.shape(leaf):
            flat_t[path] = flat_s[path]
    return P.unflatten(flat_t)


def train_model(ds: data.Dataset, *, model_cfg, optim_cfg, num_steps: int, batch_size: int, seed: int = 0,
                init_from: dict | None = None, name: str = "finetune") -> tuple[float, float, int]:
    """Train all weights (from `init_from` variables, or from scratch); returns (test accuracy, seconds, params)."""
    model = models.build(model_cfg, ds.num_classes)
    variables = dict(models.init(model, jax.random.key(seed), (1,) + tuple(ds.image_shape)))
    if init_from is not None:
        variables = {k: transplant(v, init_from.get(k, {})) for k, v in variables.items()}
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optim.build(optim_cfg, params, num_steps)
    result = train.fit(state=train.TrainState.create(params, model_state, tx),
                       loss_fn=supervised.classification_loss(model), tx=tx,
                       batch_fn=lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed),
                       num_steps=num_steps, seed=seed, name=name, verbose=False, log_every=max(num_steps, 1))
    clf = supervised.Classifier(model=model, variables=jax.tree.map(np.asarray, jax.device_get(
        {"params": result.state.params, **result.state.model_state})), fit=result)
    return clf.accuracy(ds.test_images, ds.test_labels), result.seconds, P.count(params)
