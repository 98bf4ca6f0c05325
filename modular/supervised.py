"""Supervised training of a SplitModel classifier: the backbone pretraining every method starts from."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular import data, losses, models, parallel, pretrained, train
from modular.platform import xla_cpu


@dataclasses.dataclass
class Classifier:
    model: Any                 # a models.SplitModel
    variables: dict            # {'params': ..., 'batch_stats': ...} on the host
    fit: train.FitResult | None

    def logits_fn(self, mode: str = "eval"):
        return model_logits(self.model, mode)

    def accuracy(self, images: np.ndarray, labels: np.ndarray, mode: str = "eval") -> float:
        return train.accuracy(self.logits_fn(mode), self.variables, images, labels)

    def evaluate(self, ds: data.Dataset | data.StreamingDataset, split: str = "test",
                 max_examples: int | None = None, batch_size: int | None = None) -> float:
        """Accuracy on ds's 'test' or 'train' split (the first `max_examples`, or about that many spread over
        the processes of a streamed set), in memory or streamed with evaluation preprocessing."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        if isinstance(ds, data.StreamingDataset):
            batches = ds.eval_batches(split, batch_size or 64 * jax.device_count(), max_examples=max_examples)
            return streamed_accuracy(model_logits(self.model), self.variables, batches)
        images, labels = (ds.train_images, ds.train_labels) if split == "train" else (ds.test_images, ds.test_labels)
        return self.accuracy(images[:max_examples], labels[:max_examples])


def streamed_accuracy(logits_fn, variables: dict, batches) -> float:
    """Accuracy over global batches dict(image, label, mask) (mask 0: padding), summed over every process."""
    mesh = parallel.make_mesh()
    variables = parallel.replicate(variables, mesh)
    counts = _counts_fn(logits_fn)
    correct = total = 0.0
    for batch in batches:
        c, t = parallel.to_host(counts(variables, batch))
        correct, total = correct + float(c), total + float(t)
    return correct / max(total, 1.0)


def model_logits(model, mode: str = "eval"):
    """(variables, batch) -> logits of `model` (BN in `mode`): one object per (model, mode), so every evaluation of
    a model of that architecture, whichever method trained it, reuses one traced and compiled program."""
    return _model_logits(model, mode)


@functools.lru_cache(maxsize=64)
def _model_logits(model, mode: str):
    return lambda v, b: models.apply(model, v, b["image"], mode=mode)[0]


@functools.lru_cache(maxsize=16)
def _counts_fn(logits_fn):
    return xla_cpu.jit(functools.partial(_correct_and_total, logits_fn))


def _correct_and_total(logits_fn, variables, batch):
    hit = jnp.argmax(logits_fn(variables, batch), -1) == batch["label"]
    return jnp.sum(hit * batch["mask"]), jnp.sum(batch["mask"])


def classification_loss(model, bn_mode: str = "train"):
    """loss_fn for train.fit: softmax cross-entropy of the model's logits. BN in "train" mode updates its
    statistics; in "eval" mode (a linear probe) they stay as they are. One object per (model, bn_mode), however
    the mode is passed, so every caller's compiled step is reused."""
    return _classification_loss(model, bn_mode)


@functools.lru_cache(maxsize=64)
def _classification_loss(model, bn_mode: str):
    def loss_fn(params, model_state, batch, rng):
        logits, _, new_state = models.apply(model, {"params": params, **model_state}, batch["image"], mode=bn_mode)
        loss = losses.cross_entropy(logits, batch["label"])
        return loss, (new_state, {"accuracy": losses.accuracy(logits, batch["label"])})
    return loss_fn


def train_batches(ds: data.Dataset | data.StreamingDataset, batch_size: int, seed: int):
    """batch_fn(step) over the training split: `data.batch_at` in memory, a prefetching `TrainStream` for a
    streamed dataset (close it when done); both give the same batch for a step however often restarted."""
    if isinstance(ds, data.StreamingDataset):
        return ds.train_batches(batch_size, seed)
    return lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed)


def train_classifier(ds: data.Dataset | data.StreamingDataset, *, model_cfg: ml_collections.ConfigDict,
                     optim_cfg: ml_collections.ConfigDict, num_steps: int, batch_size: int, seed: int = 0,
                     workdir: str | None = None, checkpoint_every: int = 0, log_every: int = 50,
                     name: str = "pretrain", verbose: bool = True) -> Classifier:
    """Train model_cfg on ds from scratch (or resume in workdir); returns the trained classifier."""
    model = models.build(model_cfg, ds.num_classes)
    variables = models.init(model, jax.random.key(seed), (1,) + tuple(ds.image_shape))
    params, model_state = models.split_variables(variables)
    batches = train_batches(ds, batch_size, seed)
    try:
        trained = train.train_subtrees(
            params, model_state, loss_fn=classification_loss(model), optim_cfg=optim_cfg, batch_fn=batches,
            num_steps=num_steps, seed=seed, workdir=workdir, checkpoint_every=checkpoint_every,
            log_every=log_every, name=name, verbose=verbose, show_table=True)
    finally:
        if isinstance(batches, data.streaming.TrainStream):
            batches.close()
    return Classifier(model=model, variables={"params": trained.params, **trained.model_state}, fit=trained.fit)


def probe_loss(model):
    """loss_fn for train.fit with BN on its running statistics: a linear probe leaves them as they are."""
    return classification_loss(model, "eval")


def classifier_from_weights(path: str, ds: data.Dataset | data.StreamingDataset, *,
                            model_cfg: ml_collections.ConfigDict, optim_cfg: ml_collections.ConfigDict,
                            num_steps: int, batch_size: int, seed: int = 0, workdir: str | None = None,
                            checkpoint_every: int = 0, log_every: int = 50, verbose: bool = True) -> Classifier:
    """The classifier the weights at `path` give, instead of pretraining (modular.pretrained). When the file's
    classifier has another class count, a fresh one is fitted on ds for num_steps with everything else
    frozen and BN on the file's statistics, so the published backbone reaches the methods unchanged."""
    model = models.build(model_cfg, ds.num_classes)
    variables = models.init(model, jax.random.key(seed), (1,) + tuple(ds.image_shape))
    variables, report = pretrained.load(variables, path, model_cfg)
    if jax.process_index() == 0:   # even when quiet: what a run starts from belongs in its log
        print(pretrained.describe(report, path), flush=True)
    if not report["reinitialised"] or num_steps <= 0:
        return Classifier(model=model, variables=variables, fit=None)
    params, model_state = models.split_variables(variables)
    batches = train_batches(ds, batch_size, seed)
    try:
        trained = train.train_subtrees(
            params, model_state, loss_fn=probe_loss(model), optim_cfg=optim_cfg, batch_fn=batches,
            rules=[("head/classifier/.*", 1.0)], default_mult=0.0, num_steps=num_steps, seed=seed, workdir=workdir,
            checkpoint_every=checkpoint_every, log_every=log_every, name="init_classifier", verbose=verbose,
            show_table=True)
    finally:
        if isinstance(batches, data.streaming.TrainStream):
            batches.close()
    return Classifier(model=model, variables={"params": trained.params, **trained.model_state}, fit=trained.fit)


def pretrained_backbone(config: ml_collections.ConfigDict, workdir: str, verbose: bool = True,
                        streaming: bool = False) -> tuple[Classifier, data.Dataset | data.StreamingDataset]:
    """Pretrain on config.data.name with config.model / config.optim (resumes in workdir/pretrain); with
    config.model.init, start from those weights instead (classifier_from_weights: no pretraining).

    streaming=True: the caller takes a `data.StreamingDataset` (evaluate with `Classifier.evaluate`), so a
    large `tfds:` set streams (`config.data.streaming`); otherwise the data is always read into memory."""
    ds = data.load_for_training(config.data, seed=config.seed, allow_streaming=streaming)
    start = train_classifier
    if config.model.get("init"):
        start = functools.partial(classifier_from_weights, config.model.init)
    clf = start(ds, model_cfg=config.model, optim_cfg=config.optim, num_steps=config.num_steps,
                           batch_size=config.batch_size, seed=config.seed,
                           workdir=os.path.join(workdir, "pretrain") if workdir else None,
                           checkpoint_every=config.get("checkpoint_every", 0), log_every=config.get("log_every", 50),
                           verbose=verbose)
    return clf, ds
