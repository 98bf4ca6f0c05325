"""Several tasks on one template bank: the summed loss, its rules, joint training, evaluation and summaries.

Trees follow `modular.models.isometric`: `{"shared": {templates, adapters}, "tasks": {name: {mixture, bn,
head}}}`. Which subtrees train is a rule list over those paths, so "a new task on frozen templates" is
the same training call with other rules.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import data, params as P, train
from modular.methods.templates.regularizers import clustering, entropy
from modular.methods.templates.signatures import signature
from modular.models import isometric

MIXTURES = r"tasks/[^/]+/mixture"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How every run of one experiment trains; a stage trains in `workdir/<stage>` as `<name>/<stage>`."""
    optim_cfg: ml_collections.ConfigDict
    num_steps: int
    batch_size: int               # per task
    seed: int
    mixture_lr_mult: float
    entropy_weight: float
    clustering_weight: float = 0.0
    workdir: str | None = None
    name: str = "templates"
    checkpoint_every: int = 0
    log_every: int = 50
    verbose: bool = True

    def stage(self, stage: str | None) -> tuple[str, str | None]:
        """(run name, run directory) of `stage`; None is the recipe's own name and directory."""
        if stage is None:
            return self.name, self.workdir
        return f"{self.name}/{stage}", os.path.join(self.workdir, stage) if self.workdir else None


def multitask_rules(mixture_lr_mult: float, fixed_signature: bool) -> list[tuple[str, float]]:
    """Learning-rate rules of joint training: mixtures at their own rate (frozen for fixed signatures)."""
    return [(MIXTURES, 0.0 if fixed_signature else mixture_lr_mult)]


def multitask_loss(cfg, signatures: Mapping[str, Sequence[int] | None], *, entropy_weight: float = 0.0,
                   clustering_weight: float = 0.0):
    """loss_fn for train.fit: the sum over `signatures`' tasks (None = learned mixture) of cross-entropies on
    `batch[task]`, plus the regularizers on learned mixtures. Equal arguments give the same function."""
    frozen = tuple((task, None if sig is None else tuple(int(i) for i in sig)) for task, sig in signatures.items())
    return _multitask_loss(ml_collections.FrozenConfigDict(cfg), frozen, float(entropy_weight),
                           float(clustering_weight))


@functools.lru_cache(maxsize=64)
def _multitask_loss(cfg, signatures: tuple, entropy_weight: float, clustering_weight: float):
    def loss_fn(params, batch_stats, batch, rng):
        del rng
        total, metrics, stats = 0.0, {}, batch_stats
        for task, sig in signatures:
            logits, _, stats = isometric.apply(cfg, params, stats, batch[task]["image"], task=task, train=True,
                                               signature=sig)
            labels = batch[task]["label"]
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            metrics[f"ce_{task}"] = ce
            metrics[f"acc_{task}"] = jnp.mean(jnp.argmax(logits, -1) == labels)
            total = total + ce
            if cfg.num_templates and sig is None:
                xi = isometric.mixture_weights(params, task)
                if entropy_weight:
                    total = total + entropy_weight * entropy(xi)
                if clustering_weight:
                    total = total + clustering_weight * clustering(xi, params["shared"]["templates"])
        return total, (stats, metrics)

    return loss_fn


def train_tasks(model_cfg, recipe: Recipe, datasets: Mapping[str, data.Dataset], *, stage: str | None = None,
                signatures: Mapping[str, Sequence[int] | None] | None = None, start: tuple | None = None,
                num_classes: Sequence[int] | None = None, rules: Sequence | None = None, default_mult: float = 1.0,
                num_steps: int | None = None, loss_fn: Callable | None = None,
                batch_fn: Callable | None = None, update_frozen_stats: bool = False) -> train.Trained:
    """Train the tasks named in `datasets` jointly and return host trees.

    start: (params, batch_stats) to continue from; otherwise a fresh tree with `num_classes` tasks (default:
    one per dataset, in order). rules/default_mult: what trains (default: everything, mixtures at
    `recipe.mixture_lr_mult`, frozen for fixed signatures). loss_fn/batch_fn default to the summed loss on
    `data.multitask_batch` of the datasets. update_frozen_stats: the BN statistics of frozen modules follow the
    batches too (`train.train_subtrees`; by default a frozen module's statistics stay as they are).
    """
    signatures = dict(signatures or {task: None for task in datasets})
    if start is None:
        in_channels = next(iter(datasets.values())).image_shape[-1]
        start = isometric.init(model_cfg, jax.random.key(recipe.seed), in_channels,
                               num_classes or [ds.num_classes for ds in datasets.values()])
    if rules is None:
        rules = multitask_rules(recipe.mixture_lr_mult, any(s is not None for s in signatures.values()))
    loss_fn = loss_fn or multitask_loss(model_cfg, signatures, entropy_weight=recipe.entropy_weight,
                                        clustering_weight=recipe.clustering_weight)
    batch_fn = batch_fn or (lambda step: data.multitask_batch(datasets, step, recipe.batch_size, recipe.seed))
    name, workdir = recipe.stage(stage)
    return train.train_subtrees(start[0], start[1], loss_fn=loss_fn, optim_cfg=recipe.optim_cfg, rules=list(rules),
                                default_mult=default_mult, batch_fn=batch_fn, num_steps=num_steps or recipe.num_steps,
                                seed=recipe.seed, name=name, workdir=workdir, checkpoint_every=recipe.checkpoint_every,
                                log_every=recipe.log_every, verbose=recipe.verbose,
                                update_frozen_stats=update_frozen_stats)


def logits_fn(cfg, task: str, signature: Sequence[int] | None = None):
    """(variables, batch) -> logits of `task` in eval mode, for train.predict/accuracy; equal arguments give
    the same function, so each task's evaluation compiles once."""
    return _logits_fn(ml_collections.FrozenConfigDict(cfg), task, None if signature is None else tuple(signature))


@functools.lru_cache(maxsize=64)
def _logits_fn(cfg, task: str, signature: tuple | None):
    return lambda variables, batch: isometric.apply(cfg, variables["params"], variables["batch_stats"],
                                                    batch["image"], task=task, signature=signature)[0]


# The name under which `task_view` puts the one task it keeps.
VIEWED_TASK = "viewed_task"


def task_view(variables: Mapping, task: str) -> dict:
    """`variables` ({'params', 'batch_stats'}) with only `task`'s private subtrees, renamed `VIEWED_TASK`, beside
    the shared ones: evaluating it with `logits_fn(cfg, VIEWED_TASK)` gives `task`'s logits through one program
    for every task of the same shapes (a function per task name traced, and cached, the same HLO once per task)."""
    return {kind: {**tree, "tasks": {VIEWED_TASK: tree["tasks"][task]}} for kind, tree in variables.items()}


def evaluate(cfg, params, batch_stats, ds: data.Dataset, task: str, signature: Sequence[int] | None = None) -> float:
    """Test accuracy of `task` with its moving BN statistics."""
    view = task_view(dict(params=params, batch_stats=batch_stats), task)
    return train.accuracy(logits_fn(cfg, VIEWED_TASK, signature), view, ds.test_images, ds.test_labels)


def summary(params, signatures: Mapping[str, Sequence[int] | None]) -> dict:
    """Per task: mixture weights [L, K], the argmax template per layer and one-hotness."""
    out = {}
    for task, sig in signatures.items():
        xi = np.asarray(isometric.mixture_weights(params, task, sig))
        out[task] = dict(xi=xi, signature=[int(i) for i in xi.argmax(-1)], one_hotness=isometric.one_hotness(xi))
    return out


def param_counts(params) -> dict:
    """Parameters shared by all tasks vs private to each task (mixture, BN patch, head)."""
    tasks = params["tasks"]
    return dict(shared=P.count(params["shared"]), per_task={t: P.count(v) for t, v in tasks.items()},
                per_task_parts={k: P.count(v) for k, v in next(iter(tasks.values())).items()},
                shared_parts={k: P.count(v) for k, v in params["shared"].items()})


@dataclasses.dataclass
class Outcome:
    """What a protocol measured: test accuracy per setting, the mixture summary of each shown setting,
    parameter counts of the final tree, and protocol-specific results (`extra`)."""
    accuracy: dict
    summaries: dict
    counts: dict
    extra: dict = dataclasses.field(default_factory=dict)


def train_multitask(model_cfg, recipe: Recipe, datasets: Sequence[data.Dataset],
                    stage: str = "multitask") -> tuple[Outcome, train.Trained]:
    """All datasets as tasks task0, task1, ... of one network, trained jointly (paper Fig. 2)."""
    tasks = {isometric.task_name(i): ds for i, ds in enumerate(datasets)}
    trained = train_tasks(model_cfg, recipe, tasks, stage=stage)
    params, stats = trained.params, trained.model_state
    accuracy = {ds.name: evaluate(model_cfg, params, stats, ds, task) for task, ds in tasks.items()}
    summaries = {}
    if model_cfg.num_templates:
        per_task = summary(params, {task: None for task in tasks})
        summaries = {ds.name: per_task[task] for task, ds in tasks.items()}
    return Outcome(accuracy, summaries, param_counts(params), dict(seconds=trained.fit.seconds)), trained


def compare_signatures(model_cfg, recipe: Recipe, ds: data.Dataset, kinds: Sequence[str]) -> Outcome:
    """One task trained with a learned mixture and with each fixed one-hot signature `kinds` (paper Table 5)."""
    accuracy, summaries, params = {}, {}, None
    for kind in kinds:
        sig = signature(kind, model_cfg.depth, model_cfg.num_templates, recipe.seed)
        trained = train_tasks(model_cfg, recipe, {"task0": ds}, stage=f"signature_{kind}", signatures={"task0": sig})
        params = trained.params
        accuracy[kind] = evaluate(model_cfg, params, trained.model_state, ds, "task0", sig)
        summaries[kind] = summary(params, {"task0": sig})["task0"]
    return Outcome(accuracy, summaries, param_counts(params))
