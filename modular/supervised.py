"""Supervised training of a SplitModel classifier: the backbone pretraining every method starts from."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from modular import data, losses, models, train


@dataclasses.dataclass
class Classifier:
    model: Any                 # a models.SplitModel
    variables: dict            # {'params': ..., 'batch_stats': ...} on the host
    fit: train.FitResult | None

    def logits_fn(self, mode: str = "eval"):
        return lambda v, b: models.apply(self.model, v, b["image"], mode=mode)[0]

    def accuracy(self, images: np.ndarray, labels: np.ndarray, mode: str = "eval") -> float:
        return train.accuracy(self.logits_fn(mode), self.variables, images, labels)


@functools.lru_cache(maxsize=64)
def classification_loss(model):
    """loss_fn for train.fit: softmax cross-entropy of the model's logits, BN in train mode."""
    def loss_fn(params, model_state, batch, rng):
        logits, _, new_state = models.apply(model, {"params": params, **model_state}, batch["image"], mode="train")
        loss = losses.cross_entropy(logits, batch["label"])
        return loss, (new_state, {"accuracy": losses.accuracy(logits, batch["label"])})
    return loss_fn


def train_classifier(ds: data.Dataset, *, model_cfg: ml_collections.ConfigDict,
                     optim_cfg: ml_collections.ConfigDict, num_steps: int, batch_size: int, seed: int = 0,
                     workdir: str | None = None, checkpoint_every: int = 0, log_every: int = 50,
                     name: str = "pretrain", verbose: bool = True) -> Classifier:
    """Train model_cfg on ds from scratch (or resume in workdir); returns the trained classifier."""
    model = models.build(model_cfg, ds.num_classes)
    variables = models.init(model, jax.random.key(seed), (1,) + tuple(ds.image_shape))
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    trained = train.train_subtrees(
        params, model_state, loss_fn=classification_loss(model), optim_cfg=optim_cfg,
        batch_fn=lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed),
        num_steps=num_steps, seed=seed, workdir=workdir, checkpoint_every=checkpoint_every,
        log_every=log_every, name=name, verbose=verbose, show_table=True)
    return Classifier(model=model, variables={"params": trained.params, **trained.model_state}, fit=trained.fit)


def pretrained_backbone(config: ml_collections.ConfigDict, workdir: str, verbose: bool = True) -> tuple[Classifier, data.Dataset]:
    """Pretrain on config.data.name with config.model / config.optim (resumes in workdir/pretrain)."""
    ds = data.load(config.data.name, image_size=config.data.image_size, channels=config.data.channels,
                   seed=config.seed, max_train=config.data.get("max_train"))
    clf = train_classifier(ds, model_cfg=config.model, optim_cfg=config.optim, num_steps=config.num_steps,
                           batch_size=config.batch_size, seed=config.seed,
                           workdir=os.path.join(workdir, "pretrain") if workdir else None,
                           checkpoint_every=config.get("checkpoint_every", 0), log_every=config.get("log_every", 50),
                           verbose=verbose)
    return clf, ds
