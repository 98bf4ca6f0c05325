"""Backbone-training baselines: fine-tune from the pretrained weights, or train the same model from scratch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

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


def selected_features_fn(model, layers: dict, target: int, mode: str):
    """(variables, images) -> [B, D] all-layer features in the cache's column order (`layers`), BN in `mode`.

    The same pooling and normalisation as `head2toe_features`, but differentiable through the backbone."""
    from modular.methods.head2toe_features import l2_normalise, pool_layer

    def fn(variables, images):
        _, out, new_state = models.apply(model, variables, images, mode=mode)
        feats = [l2_normalise(pool_layer(out[name].astype(jnp.float32), target)) for name in layers]
        return jnp.concatenate(feats, axis=1), new_state
    return fn


def head2toe_ft(ds: data.Dataset, clf: supervised.Classifier, *, layers: dict, mask: np.ndarray, head: dict,
                target: int, optim_cfg, num_steps: int, batch_size: int, seed: int = 0) -> tuple[float, float]:
    """Head2Toe-FT (Evci et al. 2022, Sec. 4): fine-tune the backbone *and* the Head2Toe head on the selected
    features of every layer, starting from the Head2Toe head. Returns (test accuracy, seconds)."""
    train_feats = selected_features_fn(clf.model, layers, target, "train")
    eval_feats = selected_features_fn(clf.model, layers, target, "eval")
    keep = jnp.asarray(mask, jnp.float32)
    variables = clf.variables
    params = {"backbone": variables["params"], "head": {"w": jnp.asarray(head["w"]), "b": jnp.asarray(head["b"])}}
    model_state = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p, state, batch, rng):
        x, new_state = train_feats({"params": p["backbone"], **state}, batch["image"])
        logits = (x * keep) @ p["head"]["w"] + p["head"]["b"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (new_state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])})

    tx = optim.build(optim_cfg, params, num_steps)
    result = train.fit(state=train.TrainState.create(params, model_state, tx), loss_fn=loss_fn, tx=tx,
                       batch_fn=lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed),
                       num_steps=num_steps, seed=seed, name="head2toe_ft", verbose=False, log_every=max(num_steps, 1))
    p, state = jax.device_get((result.state.params, result.state.model_state))
    logits = train.predict(lambda vh, b: (eval_feats(vh[0], b["image"])[0] * keep) @ vh[1]["w"] + vh[1]["b"],
                           ({"params": p["backbone"], **state}, p["head"]), ds.test_images)
    return float(np.mean(np.argmax(logits, -1) == ds.test_labels)), result.seconds
