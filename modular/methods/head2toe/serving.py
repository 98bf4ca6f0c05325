"""Serving a Head2Toe bank file: the kept feature indices and their head rows, on the frozen backbone."""
from __future__ import annotations

import os
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from modular import bank, checkpoint, train
from modular.methods.head2toe.features import features_fn


def load_task(entry: Mapping, bank_dir: str, backbone, *, allow_other_weights: bool = False) -> bank.ServedTask:
    """The task's logits: every layer's pooled features, the kept columns, the stored head (`modular.bank`)."""
    tree, meta = checkpoint.import_subtree(os.path.join(bank_dir, entry["file"]),
                                           backbone=backbone.classifier.variables["params"],
                                           allow_other_weights=allow_other_weights)
    features = features_fn(backbone.classifier.model, tuple(meta["layers"]), int(meta["target_size"]), "eval")
    kept, w, b = jnp.asarray(tree["features"]), jnp.asarray(tree["head"]["w"]), jnp.asarray(tree["head"]["b"])
    fn = lambda v, batch: features(v, batch["image"])[0][:, kept] @ w + b
    return bank.ServedTask(logits=lambda images: np.asarray(train.predict(fn, backbone.classifier.variables, images)))
