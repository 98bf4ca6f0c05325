"""A new task on frozen templates (paper Table 2): where its mixture weights xi start.

The target task gets its own xi [L, K], BN patch and head; templates, adapters and the source tasks are
frozen. `TRANSFER_INITS` names each way to start xi:
  source / bn_logits: the xi of the source whose model does best on the target's validation split
    (bn_logits then freezes it: only BN + head train; the paper's Sec. 4.3 "without fine-tuning Xi" arm);
  worst_source: the xi of the source whose model does worst there (the analogue of Table 2's FOOD column,
    a poorly matched source);
  random: the target's fresh xi;
  plain_bn_logits: the paper's Table 2 baseline: a plain multi-task isometric net (no templates, L layers,
    per-task BN + logits, following Mudrakarta et al.) trained on the same sources, whose new task trains only
    its BN patch and logits;
  accuracy_interp: a convex combination of all S source tasks' mixtures,
      xi_tgt = sum_s w_s * xi_s,   w = softmax(score_s / T) (or score_s / sum score for T = 0),
    where score_s is how well source model s does on the target's validation split (its own head when the
    label spaces agree, else a nearest-class-mean probe on its pooled features); T = 0 (the paper's
    normalised accuracies) is the default;
  learned_interp: w = softmax(alpha) with only the S coefficients alpha (plus BN + head) trained; the loss
    rebuilds the target's xi from alpha on every step, and `materialize` then stores it as the mixture;
  learned_interp_tuned: learned_interp's result trained further with xi free.
Interpolation happens in *mixture-weight* space (xi = softmax of the stored logits), so xi_tgt stays a
valid mixture and is stored back as log xi_tgt.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular import data, params as P, protocol, rng, train
from modular.methods.templates.multitask import (VIEWED_TASK, Outcome, Recipe, evaluate, logits_fn, multitask_loss,
                                                 param_counts, summary, task_view, train_multitask, train_tasks)
from modular.models import isometric

LOG_EPS = 1e-12


def interpolation_weights(scores: Sequence[float], temperature: float = 0.1) -> np.ndarray:
    """Simplex weights over sources from their scores (higher score -> more weight).

    temperature > 0: softmax(scores / temperature); temperature == 0: scores normalised to sum 1
    (uniform if they are all zero).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or not len(s) or not np.all(np.isfinite(s)):
        raise ValueError(f"Interpolation needs a non-empty vector of finite source scores, got {scores!r}.")
    if temperature < 0:
        raise ValueError(f"Interpolation temperature must be >= 0, got {temperature}.")
    if temperature == 0:
        if np.any(s < 0):
            raise ValueError(f"Normalised interpolation (temperature 0) needs scores >= 0, got {scores!r}.")
        return s / s.sum() if s.sum() > 0 else np.full(len(s), 1.0 / len(s))
    z = (s - s.max()) / temperature
    return np.exp(z) / np.exp(z).sum()


def interpolate_logits(source_logits: jax.Array, weights: jax.Array) -> jax.Array:
    """[S, L, K] source mixture logits, [S] simplex weights -> [L, K] logits of sum_s w_s softmax(logits_s).

    softmax of the result is exactly the interpolated mixture (rows of a convex combination of
    distributions already sum to 1, so log is its own inverse up to softmax's normalisation).
    """
    xi = jax.nn.softmax(jnp.asarray(source_logits), axis=-1)
    mixed = jnp.einsum("s,slk->lk", jnp.asarray(weights, xi.dtype), xi)
    return jnp.log(mixed + LOG_EPS)


def source_logits(params: Mapping, sources: Sequence[str]) -> jax.Array:
    """[S, L, K] stacked mixture logits of the source tasks."""
    return jnp.stack([jnp.asarray(params["tasks"][s]["mixture"]) for s in sources])


def centroid_probe(features: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """Nearest-class-mean accuracy on a held-out half: a head-free score when label spaces differ."""
    idx = np.random.default_rng(seed).permutation(len(labels))
    fit, held = idx[: len(idx) // 2], idx[len(idx) // 2:]
    classes = np.unique(labels[fit])
    means = np.stack([features[fit][labels[fit] == c].mean(0) for c in classes])
    d = ((features[held][:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(classes[d.argmin(1)] == labels[held]))


def source_scores(cfg, params: Mapping, batch_stats: Mapping, images: np.ndarray, labels: np.ndarray,
                  sources: Sequence[str], num_classes: int, seed: int = 0) -> dict:
    """{'scores': [S] accuracies of each source model on (target) images, 'kind': per source 'head'|'probe'}.

    A source whose head has `num_classes` outputs is scored by its own predictions (same label space);
    otherwise by a nearest-class-mean probe on its pooled features.
    """
    scores, kinds = [], []
    for s in sources:
        variables = task_view(dict(params=params, batch_stats=batch_stats), s)   # one program for every source
        if params["tasks"][s]["head"]["kernel"].shape[-1] == num_classes:
            scores.append(train.accuracy(logits_fn(cfg, VIEWED_TASK), variables, images, labels))
            kinds.append("head")
        else:
            features = train.predict(_features_fn(ml_collections.FrozenConfigDict(cfg), VIEWED_TASK), variables,
                                     images)
            scores.append(centroid_probe(np.asarray(features), np.asarray(labels), seed))
            kinds.append("probe")
    return dict(scores=np.asarray(scores), kind=kinds)


@functools.lru_cache(maxsize=64)
def _features_fn(cfg, task: str):
    """(variables, batch) -> `task`'s pooled features in eval mode; equal arguments give the same function, so
    the probe compiles once per task and shape (a fresh lambda per call compiled it again every time)."""
    return lambda v, b: isometric.apply(cfg, v["params"], v["batch_stats"], b["image"], task=task)[1]["features"]


def transfer_rules(target: str, kind: str, mixture_lr_mult: float) -> list[tuple[str, float]]:
    """Only the target task trains (use with default 0); 'bn_logits' also freezes its xi."""
    return [(rf"tasks/{target}/mixture", 0.0 if kind == "bn_logits" else mixture_lr_mult),
            (rf"tasks/{target}/(bn|head)/.*", 1.0)]


def new_task_start(cfg, source_params: Mapping, source_stats: Mapping, num_classes: int, in_channels: int,
                   seed: int) -> tuple[dict, dict, str]:
    """(params, batch_stats, name): the source tree plus one fresh task after its tasks."""
    sources = list(source_params["tasks"])
    classes = [int(np.shape(source_params["tasks"][t]["head"]["bias"])[-1]) for t in sources] + [num_classes]
    params, stats = isometric.init(cfg, rng.key(seed, "new_task"), in_channels, classes)
    return P.load_matching(params, source_params), P.load_matching(stats, source_stats), isometric.task_name(len(sources))


def with_mixture(params: Mapping, task: str, logits: jax.Array) -> dict:
    """params with `task`'s mixture logits replaced (shape checked)."""
    return P.load_matching(params, {"tasks": {task: {"mixture": jnp.asarray(logits, jnp.float32)}}})


def init_interp(params: Mapping, target: str, src_logits: jax.Array, init: Sequence[float] | None = None) -> dict:
    """params with `tasks/<target>/interp`: coefficients `alpha` = log(init) (uniform if None) and the constant
    `source_logits` [S, L, K] they interpolate."""
    num_sources = int(np.shape(src_logits)[0])
    w = np.full(num_sources, 1.0 / num_sources) if init is None else np.asarray(init, np.float64)
    if w.shape != (num_sources,):
        raise ValueError(f"Interpolation init must have one weight per source ({num_sources}), got shape {w.shape}.")
    interp = dict(alpha=jnp.asarray(np.log(w + LOG_EPS), jnp.float32), source_logits=jnp.asarray(src_logits))
    return P.replace_subtree(params, f"tasks/{target}", dict(params["tasks"][target], interp=interp), check=False)


def with_interpolated_mixture(params: Mapping, target: str) -> dict:
    """params whose `tasks/<target>/mixture` is rebuilt from softmax(alpha) over the (constant) source logits."""
    interp = params["tasks"][target]["interp"]
    mixture = interpolate_logits(jax.lax.stop_gradient(interp["source_logits"]), jax.nn.softmax(interp["alpha"]))
    return P.replace_subtree(params, f"tasks/{target}/mixture", mixture, check=False)


@functools.lru_cache(maxsize=16)
def learned_interpolation_loss(base_loss_fn, target: str):
    """Wrap a train.fit loss so the target's xi is the learned interpolation of the source xi."""
    def loss_fn(params, batch_stats, batch, key):
        return base_loss_fn(with_interpolated_mixture(params, target), batch_stats, batch, key)
    return loss_fn


def materialize(params: Mapping, target: str) -> tuple[dict, np.ndarray]:
    """(params with the interpolated xi stored as the target's mixture and `interp` removed, weights w)."""
    params = with_interpolated_mixture(params, target)
    task = dict(params["tasks"][target])
    w = np.asarray(jax.nn.softmax(task.pop("interp")["alpha"]))
    return P.replace_subtree(params, f"tasks/{target}", task, check=False), w


def learned_interp_rules(target: str, interp_lr_mult: float) -> list[tuple[str, float]]:
    """Only alpha, the target's BN patch and head train (use with default 0); its stored xi is overwritten
    by the loss and the source logits are constants."""
    return [(rf"tasks/{target}/interp/alpha", interp_lr_mult), (rf"tasks/{target}/mixture", 0.0),
            (rf"tasks/{target}/(bn|head)/.*", 1.0)]


@dataclasses.dataclass
class TransferContext:
    """What every transfer init starts from; inits record what they chose in `interpolation`."""
    model_cfg: ml_collections.ConfigDict
    recipe: Recipe
    start: tuple                      # (params, batch_stats): sources loaded, target fresh
    target: str                       # the new task's name
    target_ds: data.Dataset
    sources: dict                     # source task name -> dataset name
    best_source: str                  # the source whose model does best on the target's validation split
    num_steps: int
    interp_temperature: float
    interp_score_examples: int
    interp_lr_mult: float
    interp_tune_steps: int
    validation_scores: dict | None = None  # `source_scores` of each source model on the target's validation
    worst_source: str | None = None   # the source whose model does worst on the target's validation split
    finished: dict = dataclasses.field(default_factory=dict)       # init -> its trained (params, stats)
    interpolation: dict = dataclasses.field(default_factory=dict)  # init -> chosen weights (and scores)

    def source_logits(self) -> jax.Array:
        return source_logits(self.start[0], list(self.sources))

    def by_source(self, values) -> dict:
        return {name: float(v) for name, v in zip(self.sources.values(), values)}


@dataclasses.dataclass
class TransferStart:
    """How one init trains: start trees, rules (default 0), loss (None: the target's own), steps, and a
    `finish` applied to the trained params."""
    params: dict
    stats: dict
    rules: list
    num_steps: int
    loss_fn: Callable | None = None
    prior_steps: int = 0
    finish: Callable | None = None


def _start_with(ctx: TransferContext, mixture: jax.Array | None, kind: str = "source") -> TransferStart:
    params, stats = ctx.start
    if mixture is not None:
        params = with_mixture(params, ctx.target, mixture)
    return TransferStart(params, stats, transfer_rules(ctx.target, kind, ctx.recipe.mixture_lr_mult), ctx.num_steps)


def _best_source_xi(ctx: TransferContext) -> jax.Array:
    return ctx.start[0]["tasks"][ctx.best_source]["mixture"]


def _accuracy_interp(ctx: TransferContext) -> TransferStart:
    scores = ctx.validation_scores
    w = interpolation_weights(scores["scores"], ctx.interp_temperature)
    ctx.interpolation["accuracy_interp"] = dict(scores=ctx.by_source(scores["scores"]), score_kind=scores["kind"],
                                                weights=ctx.by_source(w), temperature=ctx.interp_temperature)
    return _start_with(ctx, interpolate_logits(ctx.source_logits(), w))


def choose_source(cfg, params: Mapping, batch_stats: Mapping, validation: data.Dataset, sources: Sequence[str],
                  max_examples: int, seed: int) -> tuple[str, dict]:
    """(best source task, its `source_scores` dict): every source model scored on (at most `max_examples` of,
    class-balanced) the target's validation split, held out from the target's training data. The test
    arrays are never read, so the choice cannot depend on test labels."""
    scoring = dataclasses.replace(validation, train_images=validation.test_images, train_labels=validation.test_labels)
    scoring = scoring.subset(max_train=int(max_examples), seed=seed)
    scored = source_scores(cfg, params, batch_stats, scoring.train_images, scoring.train_labels, list(sources),
                           validation.num_classes, seed)
    return list(sources)[int(np.argmax(scored["scores"]))], scored


def _learned_interp(ctx: TransferContext) -> TransferStart:
    params, stats = ctx.start
    r = ctx.recipe
    base = multitask_loss(ctx.model_cfg, {ctx.target: None}, entropy_weight=r.entropy_weight,
                          clustering_weight=r.clustering_weight)

    def finish(trained):
        params, w = materialize(trained, ctx.target)
        ctx.interpolation["learned_interp"] = dict(weights=ctx.by_source(w))
        return params

    return TransferStart(init_interp(params, ctx.target, ctx.source_logits()), stats,
                         learned_interp_rules(ctx.target, ctx.interp_lr_mult), ctx.num_steps,
                         loss_fn=learned_interpolation_loss(base, ctx.target), finish=finish)


def _learned_interp_tuned(ctx: TransferContext) -> TransferStart:
    params, stats = ctx.finished["learned_interp"]
    return TransferStart(params, stats, transfer_rules(ctx.target, "source", ctx.recipe.mixture_lr_mult),
                         ctx.interp_tune_steps, prior_steps=ctx.num_steps)


def _worst_source_xi(ctx: TransferContext) -> jax.Array:
    if ctx.worst_source is None:
        raise ValueError("Transfer init 'worst_source' needs the sources' validation scores (worst_source unset).")
    return ctx.start[0]["tasks"][ctx.worst_source]["mixture"]


def plain_config(model_cfg) -> ml_collections.ConfigDict:
    """The paper's Table 2 baseline architecture: the same isometric net with L plain (unshared) layers, no
    templates, per-task BN patches and logits."""
    return ml_collections.ConfigDict(dict(model_cfg.items(), num_templates=0, bn="per_task"))


def plain_transfer_rules(target: str) -> list[tuple[str, float]]:
    """The Table 2 baseline's new task: only its BN patch and logits train (use with default 0)."""
    return [(rf"tasks/{target}/(bn|head)/.*", 1.0)]


def plain_bn_logits_transfer(model_cfg, recipe: Recipe, sources: Sequence[data.Dataset], fit: data.Dataset,
                             target: data.Dataset, num_steps: int) -> tuple[float, dict, dict]:
    """(target test accuracy, source test accuracies, parameter counts) of the paper's Table 2 baseline: a plain
    multi-task net trained jointly on `sources` (same recipe and steps as the template model), then a new task
    whose BN patch and logits alone train on `fit` for `num_steps`."""
    plain = plain_config(model_cfg)
    tasks = {isometric.task_name(i): ds for i, ds in enumerate(sources)}
    trained = train_tasks(plain, recipe, tasks, stage="transfer_plain_sources", rules=[])
    source_accuracy = {ds.name: evaluate(plain, trained.params, trained.model_state, ds, t) for t, ds in tasks.items()}
    params, stats, task = new_task_start(plain, trained.params, trained.model_state, target.num_classes,
                                         target.image_shape[-1], recipe.seed)
    run = train_tasks(plain, recipe, {task: fit}, stage="transfer_plain_bn_logits", start=(params, stats),
                      rules=plain_transfer_rules(task), default_mult=0.0, num_steps=num_steps)
    return evaluate(plain, run.params, run.model_state, target, task), source_accuracy, param_counts(run.params)


PLAIN = "plain_bn_logits"

TRANSFER_INITS: dict[str, Callable[[TransferContext], TransferStart]] = {
    "source": lambda ctx: _start_with(ctx, _best_source_xi(ctx)),
    "worst_source": lambda ctx: _start_with(ctx, _worst_source_xi(ctx)),
    "random": lambda ctx: _start_with(ctx, None),
    "bn_logits": lambda ctx: _start_with(ctx, _best_source_xi(ctx), "bn_logits"),
    "accuracy_interp": _accuracy_interp,
    "learned_interp": _learned_interp,
    "learned_interp_tuned": _learned_interp_tuned,
    PLAIN: None,   # its own model and sources: `plain_bn_logits_transfer`
}


def compare_transfer_inits(model_cfg, recipe: Recipe, sources: Sequence[data.Dataset], target: data.Dataset, *,
                           inits: Sequence[str], num_steps: int, interp_temperature: float,
                           interp_score_examples: int, interp_lr_mult: float, interp_tune_steps: int,
                           val_fraction: float = 0.2, trained_sources: tuple | None = None) -> Outcome:
    """Train the sources jointly (or take `trained_sources` = (Outcome, train.Trained) of that), then the target
    task from each of `inits` (run in order, each from the same start) on the target's training data minus a
    validation split; the validation split alone chooses the source and the interpolation weights; the test
    set gives the reported accuracies. extra: source_accuracy, source_task, validation_scores, steps per
    init, interpolation weights."""
    inits = list(inits)
    unknown = [k for k in inits if k not in TRANSFER_INITS]
    if unknown:
        raise ValueError(f"Unknown transfer init {unknown[0]!r}; known: {', '.join(TRANSFER_INITS)}.")
    if "learned_interp_tuned" in inits and "learned_interp" not in inits[:inits.index("learned_interp_tuned")]:
        raise ValueError("Transfer init 'learned_interp_tuned' must come after 'learned_interp' in the list of inits.")
    multi, trained = trained_sources or train_multitask(model_cfg, recipe, sources)
    names = {isometric.task_name(i): ds.name for i, ds in enumerate(sources)}
    params, stats, task = new_task_start(model_cfg, trained.params, trained.model_state, target.num_classes,
                                         target.image_shape[-1], recipe.seed)
    fit, validation = protocol.validation_split(target, val_fraction, recipe.seed)
    best, scored = choose_source(model_cfg, params, stats, validation, list(names), interp_score_examples, recipe.seed)
    worst = list(names)[int(np.argmin(scored["scores"]))]
    ctx = TransferContext(model_cfg, recipe, (params, stats), task, fit, names, best, num_steps, interp_temperature,
                          interp_score_examples, interp_lr_mult, interp_tune_steps, validation_scores=scored,
                          worst_source=worst)
    accuracy, steps, summaries, plain = {}, {}, {}, {}
    for kind in inits:
        if kind == PLAIN:
            accuracy[kind], plain["source_accuracy"], plain["params"] = plain_bn_logits_transfer(
                model_cfg, recipe, sources, fit, target, num_steps)
            steps[kind] = num_steps
            continue
        start = TRANSFER_INITS[kind](ctx)
        run = train_tasks(model_cfg, recipe, {task: fit}, stage=f"transfer_{kind}", start=(start.params, start.stats),
                          rules=start.rules, default_mult=0.0, num_steps=start.num_steps, loss_fn=start.loss_fn)
        params, stats = run.params, run.model_state
        if start.finish is not None:
            params = start.finish(params)
        ctx.finished[kind] = (params, stats)
        accuracy[kind] = evaluate(model_cfg, params, stats, target, task)
        steps[kind] = start.num_steps + start.prior_steps
        summaries[kind] = summary(params, {task: None})[task]
    return Outcome(accuracy, summaries, param_counts(params),
                   dict(source_accuracy=multi.accuracy, source_task=names[ctx.best_source],
                        worst_source_task=names[worst], plain=plain, steps=steps,
                        validation_scores=ctx.by_source(scored["scores"]), interpolation=ctx.interpolation))
