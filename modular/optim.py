"""Optimizers built from parameter rules: freeze, unfreeze and scale learning rates per subtree.

One ordered rule list `[(regex, lr_multiplier), ...]` says everything: a multiplier of 0 freezes the
matching subtree (no update and no optimizer state, via `optax.partition` with `optax.set_to_zero`),
any other value scales the base learning rate. Unmatched paths get `default_mult` (1.0 = train).

The base learning rate and the run's length are runtime values: `build` keeps them in the optimizer state
(`ScheduleState`) and computes the schedule from them in the step, so a grid over learning rates and step
counts trains through one compiled program per shape. Every configured optimizer's update is linear in its
rate (Adam, AdamW's decoupled decay, SGD/momentum), so the rules' multipliers are applied at build time and
the scheduled rate scales the result.
"""
from __future__ import annotations

import json
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import compiled, params as P

FROZEN = "frozen"


def default_config() -> ml_collections.ConfigDict:
    """The optimizer every experiment starts from (configs/common.py `optim_config` overrides keys of it)."""
    return ml_collections.ConfigDict(dict(
        name="adam",            # adam | adamw | sgd | momentum
        lr=3e-3,
        schedule="cosine",      # constant | cosine | warmup_cosine | step (decay_at, decay_factor)
        warmup_steps=0,
        weight_decay=0.0,       # adamw/sgd: decoupled decay on kernels (ndim > 1) only
        momentum=0.9,
        grad_clip_norm=0.0,     # 0 disables
        lr_mults=[],            # ordered [(regex, multiplier)], 0 freezes; unmatched -> default_mult
        default_mult=1.0,
    ))


def schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Learning-rate schedule over `num_steps` (the base rate; multipliers scale it per subtree)."""
    lr, warm = float(cfg.lr), int(cfg.get("warmup_steps", 0))
    kind = cfg.get("schedule", "constant")
    if kind == "constant":
        return optax.constant_schedule(lr) if not warm else optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])
    if kind in ("cosine", "warmup_cosine"):
        return optax.warmup_cosine_decay_schedule(0.0 if warm else lr, lr, warm, max(num_steps, warm + 1), lr * 0.0)
    if kind == "step":
        return step_schedule(lr, num_steps, decay_at=cfg.get("decay_at", (0.5, 0.75)),
                             decay_factor=float(cfg.get("decay_factor", 0.1)), warmup_steps=warm)
    raise ValueError(f"Unknown learning-rate schedule '{kind}'; known: constant, cosine, warmup_cosine, step.")


def _step_decay(decay_at, decay_factor: float) -> tuple[list[float], float]:
    """The step schedule's decay points (fractions of the run) and factor, checked (one sentence each)."""
    fractions = [float(f) for f in (decay_at or ())]
    if any(not 0.0 < f < 1.0 for f in fractions):
        raise ValueError(f"optim.decay_at must hold fractions of the run in (0, 1), got {list(decay_at)}.")
    if not 0.0 < decay_factor <= 1.0:
        raise ValueError(f"optim.decay_factor must be in (0, 1], got {decay_factor}.")
    return fractions, decay_factor


def step_schedule(lr: float, num_steps: int, *, decay_at=(0.5, 0.75), decay_factor: float = 0.1,
                  warmup_steps: int = 0) -> optax.Schedule:
    """`lr` multiplied by `decay_factor` at each fraction `decay_at` of `num_steps` (the classic step decay,
    e.g. x0.1 at 50% and 75% of training), after an optional linear warmup."""
    fractions, decay_factor = _step_decay(decay_at, decay_factor)
    bounds = sorted({max(1, int(round(f * num_steps))) for f in fractions})
    decayed = optax.piecewise_constant_schedule(lr, {b: decay_factor for b in bounds})
    if not warmup_steps:
        return decayed
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps),
                                 lambda s: decayed(s + warmup_steps)], [warmup_steps])


class ScheduleState(NamedTuple):
    """What `scale_by_schedule_in_state` keeps: the step count, the base rate and the run's length."""
    count: jax.Array        # int32
    lr: jax.Array           # float32
    num_steps: jax.Array    # int32


def schedule_value(cfg: ml_collections.ConfigDict, count: jax.Array, lr: jax.Array,
                   num_steps: jax.Array) -> jax.Array:
    """`schedule(cfg, num_steps)(count)` with `lr` and `num_steps` traced (runtime) values: the same rate,
    computed in the step from the optimizer state. Only the schedule's kind, warmup and decay shape are static."""
    kind, warm = cfg.get("schedule", "constant"), int(cfg.get("warmup_steps", 0))
    count, lr, total = jnp.asarray(count), jnp.asarray(lr, jnp.float32), jnp.asarray(num_steps)
    ramp = lr * jnp.clip(count, 0, warm) / warm if warm else lr   # optax.linear_schedule(0, lr, warm)
    if kind == "constant":
        return jnp.where(count < warm, ramp, lr) if warm else lr
    if kind in ("cosine", "warmup_cosine"):
        decay = jnp.maximum(total, warm + 1) - warm                 # optax.warmup_cosine_decay_schedule
        done = jnp.minimum(count - warm, decay).astype(jnp.float32)
        cosine = lr * (0.5 * (1 + jnp.cos(jnp.pi * done / decay.astype(jnp.float32))))
        return jnp.where(count < warm, ramp, cosine) if warm else cosine
    if kind == "step":
        fractions, factor = _step_decay(cfg.get("decay_at", (0.5, 0.75)), float(cfg.get("decay_factor", 0.1)))
        rate, previous = lr, None
        for f in sorted(fractions):   # the bounds of `step_schedule`, each distinct bound decaying once
            bound = jnp.maximum(1, jnp.round(f * total.astype(jnp.float32)).astype(total.dtype))
            distinct = True if previous is None else bound != previous
            rate = jnp.where(distinct & (count >= bound), rate * factor, rate)
            previous = bound
        return jnp.where(count < warm, ramp, rate) if warm else rate
    raise ValueError(f"Unknown learning-rate schedule '{kind}'; known: constant, cosine, warmup_cosine, step.")


def scale_by_schedule_in_state(cfg: ml_collections.ConfigDict, lr: float,
                               num_steps: int) -> optax.GradientTransformation:
    """Scale updates by the configured schedule at base rate `lr` over `num_steps`, both kept in the state
    (so the step's program does not depend on them: a grid over them reuses one compilation)."""
    # A bad schedule config fails at build time, in one sentence; traced abstractly, so nothing compiles.
    jax.eval_shape(lambda: schedule_value(cfg, 0, lr, num_steps))

    def init(params):
        del params
        return ScheduleState(count=jnp.zeros((), jnp.int32), lr=jnp.asarray(lr, jnp.float32),
                             num_steps=jnp.asarray(num_steps, jnp.int32))

    def update(updates, state, params=None):
        del params
        rate = schedule_value(cfg, state.count, state.lr, state.num_steps)
        updates = jax.tree.map(lambda u: (rate * u).astype(u.dtype), updates)
        return updates, state._replace(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def _base(cfg: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    name, wd = cfg.get("name", "adam"), float(cfg.get("weight_decay", 0.0))
    def decay_mask(tree):  # callable: inside optax.partition the tree holds only this label's leaves
        return jax.tree.map(lambda x: jnp.ndim(x) > 1, tree)
    if name == "adam":
        return optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd, mask=decay_mask)
    if name in ("sgd", "momentum"):
        momentum = float(cfg.get("momentum", 0.9)) if name == "momentum" else None
        tx = optax.sgd(lr, momentum=momentum)
        return optax.chain(optax.add_decayed_weights(wd, mask=decay_mask), tx) if wd else tx
    raise ValueError(f"Unknown optimizer '{name}'; known: adam, adamw, sgd, momentum.")


def lr_labels(params: Mapping, cfg: ml_collections.ConfigDict) -> dict:
    """A tree of labels: FROZEN for multiplier 0, else the multiplier as a string key.

    Every rule must match at least one parameter (one sentence naming the rule and what it may have meant)."""
    rules = [tuple(r) for r in cfg.get("lr_mults", [])]
    P.check_rules_match(params, rules, what="learning-rate rule (optim.lr_mults)")
    mults = P.label_tree(params, rules, float(cfg.get("default_mult", 1.0)))
    return jax.tree.map(lambda m: FROZEN if float(m) == 0.0 else f"x{float(m):g}", mults)


def stats_update_mask(params: Mapping, model_state: Any, cfg: ml_collections.ConfigDict) -> Any:
    """For each leaf of `model_state` (BatchNorm statistics), True when it may update: when some parameter
    of the module that owns it trains. A frozen subtree's statistics are frozen with it.

    A statistic's module is its path without the collection name ('batch_stats', when params has no such
    key) and without the leaf name; the nearest enclosing node of `params` decides. A statistic whose module
    owns no parameter at all follows the rules matched on its own path."""
    labels = P.flatten(lr_labels(params, cfg))
    trains = {p: lab != FROZEN for p, lab in labels.items()}
    top = {p.split("/")[0] for p in trains}
    rules, default = [tuple(r) for r in cfg.get("lr_mults", [])], float(cfg.get("default_mult", 1.0))

    def updates(key_path, _):
        parts = P.keypath_str(key_path).split("/")
        if len(parts) > 1 and parts[0] not in top:
            parts = parts[1:]
        module = parts[:-1]
        for depth in range(len(module), 0, -1):
            prefix = "/".join(module[:depth]) + "/"
            under = [t for p, t in trains.items() if p.startswith(prefix)]
            if under:
                return any(under)
        return float(P.match_rules("/".join(parts), rules, default)) != 0.0

    return jax.tree_util.tree_map_with_path(updates, model_state)


def stats_table(model_state: Any, update_mask: Any, title: str = "") -> str:
    """Which modules' statistics (BatchNorm mean and variance) update and which stay frozen: one row per group
    of modules that share their first two path components, with counts."""
    groups: dict[tuple[str, str], set] = {}
    for path, updates in P.flatten(update_mask).items():
        module = path.rsplit("/", 1)[0]
        group = "/".join(module.split("/")[:3]) + ("/..." if module.count("/") > 2 else "")
        groups.setdefault((group, "updates" if updates else "frozen"), set()).add(module)
    width = max([len(g) for g, _ in groups] + [6])
    lines = [title] if title else []
    lines.append(f"{'modules':<{width}}  {'count':>5}  statistics")
    lines += [f"{g:<{width}}  {len(m):>5}  {label}" for (g, label), m in groups.items()]
    total = {label: sum(len(m) for (_, l), m in groups.items() if l == label) for label in ("updates", "frozen")}
    lines.append(f"totals: {total['updates']} module(s) update their statistics, {total['frozen']} frozen")
    return "\n".join(lines)


def override(base: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A copy of optimizer config `base` with `fields` (lr_mults, default_mult, lr, ...) replaced.

    Methods derive their optimizers from a run's (locked) config this way and leave that config untouched."""
    cfg = ml_collections.ConfigDict(base.to_dict())
    cfg.update(fields)
    return cfg


def trainable_mask(params: Mapping, cfg: ml_collections.ConfigDict) -> dict:
    """True for leaves that train; the train step wraps the rest in stop_gradient."""
    return jax.tree.map(lambda lab: lab != FROZEN, lr_labels(params, cfg))


def trainable_count(params: Mapping, mask: Mapping) -> int:
    """Number of parameters whose mask leaf is True (what a method actually trains)."""
    return int(sum(np.size(x) for x, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m))


def build(cfg: ml_collections.ConfigDict, params: Mapping, num_steps: int) -> optax.GradientTransformation:
    """The optimizer for `params`: one base optimizer per distinct multiplier (at that multiplier as its
    rate), frozen subtrees stateless, then the schedule at base rate `cfg.lr` over `num_steps`, both of which
    live in the optimizer state (`ScheduleState`): two optimizers that differ only in them share a program."""
    return _build_labelled(cfg, lr_labels(params, cfg), num_steps)


def _build_labelled(cfg: ml_collections.ConfigDict, labels: Mapping, num_steps: int) -> optax.GradientTransformation:
    """`build` for a tree of labels (`lr_labels`) already resolved from the rules."""
    transforms: dict[str, optax.GradientTransformation] = {}
    for label in set(jax.tree.leaves(labels)):
        transforms[label] = optax.set_to_zero() if label == FROZEN else _base(cfg, float(label[1:]))
    tx = optax.chain(optax.partition(transforms, labels),
                     scale_by_schedule_in_state(cfg, float(cfg.lr), int(num_steps)))
    clip = float(cfg.get("grad_clip_norm", 0.0))
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip else tx


_INIT_PROGRAMS = compiled.ProgramCache(maxsize=32)
_STATE_LAYOUTS = compiled.ProgramCache(maxsize=64)


def _state_fn(cfg: ml_collections.ConfigDict, labels: Mapping):
    """`(params, lr, num_steps) -> build(...).init(params)` with the rate and length as traced arguments."""
    def init(p, lr, n):
        return jax.tree.map(lambda x: x._replace(lr=lr, num_steps=n) if isinstance(x, ScheduleState) else x,
                            _build_labelled(cfg, labels, 1).init(p), is_leaf=lambda x: isinstance(x, ScheduleState))
    return init


def initial_state(cfg: ml_collections.ConfigDict, params: Mapping, num_steps: int) -> Any:
    """`build(cfg, params, num_steps).init(params)`, computed by one compiled program per optimizer program
    and trained leaves, with the base rate and the step count as its arguments. Run eagerly, `init` compiles
    one small XLA program for every distinct parameter shape (the optimizer's zeros); the same values come out
    either way. Frozen leaves hold no state, so the program takes the trained leaves alone and the state is
    laid out in `params`' tree on the host: a sweep over a patch and the retrain of the whole model with the
    rest frozen share one program (traced per whole tree, they lowered to the same HLO and compiled twice).
    Only the values are shared: every configured optimizer's state starts as zeros, a count and the rate."""
    labels = lr_labels(params, cfg)
    # The trained leaves in the tree's own order, under their index rather than their path: the same leaves
    # under other names (a multi-task tree's 'shared' prefix) share the program too.
    kept = [(x, lab) for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)) if lab != FROZEN]
    trained = {f"{i:06d}": x for i, (x, _) in enumerate(kept)}
    trained_labels = {f"{i:06d}": lab for i, (_, lab) in enumerate(kept)}
    args = (np.float32(float(cfg.lr)), np.int32(int(num_steps)))
    program = _INIT_PROGRAMS.get((_labelled_key(cfg, trained_labels), compiled.tree_signature(trained)),
                                 lambda: jax.jit(lambda p, lr, n: jax.tree.leaves(
                                     _state_fn(cfg, trained_labels)(p, lr, n))))

    def layout():   # the whole tree's state structure, and whether the trained leaves' state fills it in order
        whole = jax.eval_shape(_state_fn(cfg, labels), params, *args)
        leaves = jax.eval_shape(program, trained, *args)
        fits = [(x.shape, x.dtype) for x in jax.tree.leaves(whole)] == [(x.shape, x.dtype) for x in leaves]
        return jax.tree.structure(whole), fits
    whole_key = (_labelled_key(cfg, labels), compiled.tree_signature(params))
    structure, fits = _STATE_LAYOUTS.get(whole_key, layout)
    if not fits:   # an optimizer whose state a frozen leaf shapes: compute it on the whole tree
        whole = _INIT_PROGRAMS.get(("whole tree",) + whole_key, lambda: jax.jit(_state_fn(cfg, labels)))
        return whole(params, *args)
    return jax.tree.unflatten(structure, program(trained, *args))


def program_key(cfg: ml_collections.ConfigDict, params: Mapping | None = None) -> str:
    """What of an optimizer config changes `build`'s update program: everything but the base rate (which,
    with the step count, lives in the state). Given `params`, the learning-rate rules count by what they
    resolve to on it (each leaf's multiplier, `lr_labels`), not by how they are spelled: `[('.*', 1.0)]` and no
    rules at all build the same program."""
    if params is None:
        return json.dumps({k: v for k, v in cfg.to_dict().items() if k != "lr"}, sort_keys=True, default=str)
    return _labelled_key(cfg, lr_labels(params, cfg))


def _labelled_key(cfg: ml_collections.ConfigDict, labels: Mapping) -> str:
    fields = {k: v for k, v in cfg.to_dict().items() if k not in ("lr", "lr_mults", "default_mult")}
    fields["lr_labels"] = jax.tree.leaves(labels)
    return json.dumps(fields, sort_keys=True, default=str)


def state_size(opt_state: Any) -> int:
    """Number of array elements an optimizer keeps (frozen subtrees must contribute none)."""
    return int(sum(jnp.size(x) for x in jax.tree.leaves(opt_state) if jnp.ndim(x) > 0))


def trainable_table(params: Mapping, cfg: ml_collections.ConfigDict, title: str = "") -> str:
    """The printed trainable/frozen table (with learning-rate multipliers) for a run's log."""
    labels = jax.tree.map(lambda lab: "frozen" if lab == FROZEN else f"train lr{lab}", lr_labels(params, cfg))
    return P.table(params, labels, title=title)
