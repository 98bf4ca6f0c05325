"""Learning-rate sweeps, every rate of the grid trained in one compiled program: a transfer mode's patch
(`sweep`, `tune_and_adapt`) and the joint multi-task training of several tasks (`sweep_multitask`, used by the
multi-task and multi-resolution rows).

The paper's practical finding is that patches want a much larger learning rate than full fine-tuning, so
every mode gets the same grid and picks its rate on a validation split. The rate lives in the optimizer
state (`optax.inject_hyperparams(optax.scale)` after the mode's optimizer built at rate 1), so one
`jax.vmap` over stacked states trains the whole grid on the same batches with one compilation; only what
differs per rate is batched (the patch, its optimizer state, re-estimated statistics), never the frozen
backbone. On 2 CPU cores the rates trained one after another through the same single compilation were
faster still (`resolve_program('auto')` picks that on the CPU); both beat one compilation per rate. This is
exact for the configured optimizers, whose update is linear in the base rate (Adam, AdamW, SGD/momentum,
any multiplicative schedule); `sequential=True` trains the rates one after another through that one step.
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from modular import compiled, data, models, optim, params as P, protocol, reporting
from modular.platform import xla_cpu
from modular.methods.patches import multitask
from modular.methods.patches.modes import check_applicable, get_mode, lr_rules
from modular.methods.patches.transfer import accuracy, adapt, patch_loss, target_start


def rate_in_state(cfg, params, num_steps: int, lr: float) -> optax.GradientTransformation:
    """The mode's optimizer at base rate 1, then a scale by `lr` that is kept in (and read from) its state."""
    unit = optim.build(optim.override(cfg, lr=1.0), params, num_steps)
    return optax.chain(unit, optax.inject_hyperparams(optax.scale)(step_size=float(lr)))


_SCALE_INIT = compiled.ProgramCache(maxsize=32)


def initial_lane_state(cfg, params, num_steps: int, lr: float):
    """`rate_in_state(cfg, params, num_steps, lr).init(params)`, the same tree, dtypes and values, made by
    compiled programs whose arguments are the rate and the step count (`optim.initial_state` for the mode's
    optimizer, one more for the scale). Run eagerly, `init` compiled two small XLA programs per distinct
    parameter shape, for every rate of every sweep: most of a patches run's compilations on the CPU."""
    unit = optim.initial_state(optim.override(cfg, lr=1.0), params, num_steps)
    # inject_hyperparams keeps the rate in the params' highest float dtype: convert once, on the host, as the
    # eager init does, so that the program only copies it.
    dtype = jax.eval_shape(lambda p: jnp.zeros((), optax.tree.dtype(p, "highest")), params).dtype
    # `scale`'s own state is empty, so the state depends on the params only through that dtype: one program per
    # dtype, called on the rate alone (keyed on the params' tree, every patch mode compiled it again).
    program = _SCALE_INIT.get(np.dtype(dtype).name, lambda: jax.jit(
        lambda rate: optax.inject_hyperparams(optax.scale)(step_size=rate).init(rate)))
    return unit, program(np.asarray(float(lr), dtype))


def lane_step(loss_fn, tx, stats_train: bool):
    """One step of one rate: `lane` = (trainable params, optimizer state[, BN statistics]) differs per rate;
    `shared` = (frozen params[, BN statistics]) is the same for every rate, so under `jax.vmap` the frozen
    backbone's weights (and, with frozen statistics, its whole forward pass up to the patch) are not batched."""
    def step(lane, shared, batch, key):
        trainable, opt_state = lane[0], lane[1]
        model_state = lane[2] if stats_train else shared[1]

        def objective(t):
            return loss_fn(P.merge(t, shared[0]), model_state, batch, key)
        (loss, (new_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return (trainable, opt_state) + ((new_state,) if stats_train else ()), dict(metrics, loss=loss)
    return step


_COMPILED = compiled.ProgramCache(maxsize=16)


def _compiled(program_key, loss_fn, cfg, trainable, num_steps: int, sequential: bool, stats_train: bool):
    """The jitted (vmapped) lane step, reused by later sweeps of the same program and shapes (other seeds,
    other step counts: the rate and the run's length are optimizer state). `program_key` names what `loss_fn`
    computes (the model and the mode, or the multi-task sharing)."""
    key = (program_key, optim.program_key(cfg), sequential, stats_train, compiled.tree_signature(trainable))

    def build():
        step = lane_step(loss_fn, rate_in_state(cfg, trainable, num_steps, 1.0), stats_train)
        return (xla_cpu.jit(step) if sequential else
                xla_cpu.jit(jax.vmap(step, in_axes=(0, None, None, None)), donate_argnums=(0,)))

    return _COMPILED.get(key, build)


def train_rates(loss_fn, program_key, cfg, trainable, frozen, model_state, lrs: Sequence[float], batches, *,
                num_steps: int, seed: int, stats_train: bool, sequential: bool, name: str,
                verbose: bool = True) -> list:
    """Train `trainable` (with `frozen` and `model_state` beside it) at every rate of `lrs` on the same
    batches, through one compiled step; returns each rate's final (trainable, optimizer state[, model state])."""
    lanes = [(trainable, initial_lane_state(cfg, trainable, num_steps, lr)) + ((model_state,) if stats_train else ())
             for lr in lrs]
    shared = (frozen, model_state)
    base_key = jax.random.key(seed)
    compiled = _compiled(program_key, loss_fn, cfg, trainable, num_steps, sequential, stats_train)
    if sequential:   # one compilation too (the rate is state), the rates one after another
        finals = []
        for lane in lanes:
            for s in range(num_steps):
                lane, _ = compiled(lane, shared, batches(s), jax.random.fold_in(base_key, s))
            finals.append(jax.device_get(lane))
        return finals
    state = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *lanes)
    for s in range(num_steps):
        state, metrics = compiled(state, shared, batches(s), jax.random.fold_in(base_key, s))
        if verbose and (s + 1) % max(num_steps // 2, 1) == 0:
            losses = " ".join(f"{v:.3g}" for v in np.asarray(metrics["loss"]))
            print(f"[sweep:{name}] step {s + 1}/{num_steps} loss per lr {losses}", flush=True)
    host = jax.device_get(state)
    return [_lane(host, i) for i in range(len(lrs))]


def _finite(tree) -> bool:
    return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


def resolve_program(program: str) -> bool:
    """Whether to train a grid's rates one after another: 'sequential', 'vmap', or 'auto' (sequential on the
    CPU, where it measured faster; vmap on accelerators)."""
    if program not in ("auto", "vmap", "sequential"):
        raise ValueError(f"Unknown sweep program {program!r}; known: auto, vmap, sequential.")
    return program == "sequential" or (program == "auto" and jax.default_backend() == "cpu")


def _lane(tree, i: int):
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


def sweep(source, fit: data.Dataset, val: data.Dataset, mode: str, lrs: Sequence[float], *, model_cfg, optim_cfg,
          num_steps: int, batch_size: int, seed: int, sequential: bool = False, verbose: bool = True) -> dict:
    """Train `mode`'s patch on `fit` at every rate of `lrs` and score each on `val` (its test arrays hold the
    held-out training examples). Returns {'lrs', 'validation' (accuracy per rate, NaN if it diverged),
    'seconds', 'program', 'variables' (each rate's final model variables)}."""
    lrs = [float(v) for v in lrs]
    model, start = target_start(source, model_cfg, fit.num_classes, fit.image_shape, seed)
    check_applicable(start["params"], mode)
    cfg = optim.override(optim_cfg, lr_mults=[tuple(r) for r in lr_rules(mode)], default_mult=0.0)
    parts = P.split(start["params"], [(rule, "train") for rule in get_mode(mode).trains], "frozen")
    trainable, frozen = parts.get("train", {}), parts.get("frozen", {})
    _, model_state = models.split_variables(start)
    stats_train = get_mode(mode).task_bn_stats
    batches = lambda s: data.batch_at(fit.train_images, fit.train_labels, s, batch_size, seed)
    t0 = time.perf_counter()
    finals = train_rates(patch_loss(model, mode), (model, mode), cfg, trainable, frozen, model_state, lrs, batches,
                         num_steps=num_steps, seed=seed, stats_train=stats_train, sequential=sequential, name=mode,
                         verbose=verbose)
    scores, variables = [], []
    for lane in finals:
        v = {"params": P.merge(lane[0], frozen), **(lane[2] if stats_train else model_state)}
        scores.append(accuracy(model, v, val.test_images, val.test_labels) if _finite(v) else float("nan"))
        variables.append(v)
    seconds = time.perf_counter() - t0
    if verbose:
        shown = "  ".join(f"lr {lr:g}: {100 * a:.1f}%" for lr, a in zip(lrs, scores))
        print(f"[sweep:{mode}] validation {shown} ({seconds:.1f}s)", flush=True)
    return dict(lrs=lrs, validation=scores, seconds=seconds, program="sequential" if sequential else "vmap",
                variables=variables)


def choose_rate(lrs: Sequence[float], scores: Sequence[float]) -> tuple[float, list]:
    """(the rate with the best validation score, [{'setting': {'lr'}, 'validation'}] for results.json); ties
    go to the earlier rate of the grid (`protocol.select`)."""
    settings = [dict(lr=float(v)) for v in lrs]
    best, _ = protocol.select(settings, scores)
    return best["lr"], [dict(setting=s, validation=v) for s, v in zip(settings, scores)]


def sweep_multitask(model, variables: Mapping, fits: Sequence[data.Dataset], vals: Sequence[data.Dataset],
                    sharing: str, lrs: Sequence[float], *, optim_cfg, num_steps: int, batch_size: int, seed: int,
                    sequential: bool = False, verbose: bool = True) -> dict:
    """Joint multi-task training (`multitask.train_multitask`'s loss, every parameter trains) of the tasks
    `fits` at every rate of `lrs` through one compiled step; each rate is scored by its mean accuracy over
    the tasks' validation splits `vals` (their test arrays hold held-out training examples).

    Returns {'lrs', 'validation' (mean over tasks per rate, NaN if it diverged), 'validation_per_task',
    'seconds', 'program', 'trees' (each rate's final (params, model state))}."""
    lrs = [float(v) for v in lrs]
    classes = {ds.num_classes for ds in fits}
    if len(classes) != 1:
        raise ValueError(f"Multi-task patches need tasks with one class count (to stack heads); got {sorted(classes)}.")
    params, state = multitask.init_multitask(variables, len(fits), sharing)
    cfg = optim.override(optim_cfg, lr_mults=[], default_mult=1.0)
    named = {multitask.task_key(i): ds for i, ds in enumerate(fits)}
    batches = lambda s: data.multitask_batch(named, s, batch_size, seed)
    t0 = time.perf_counter()
    finals = train_rates(multitask.multitask_loss(model, len(fits)), (model, "multitask", sharing, len(fits)), cfg,
                         params, {}, state, lrs, batches, num_steps=num_steps, seed=seed, stats_train=True,
                         sequential=sequential, name=f"multitask:{sharing}", verbose=verbose)
    per_task, trees = [], []
    for lane in finals:
        p, st = lane[0], lane[2]
        ok = _finite((p, st))
        per_task.append([accuracy(model, multitask.task_variables(p, st, i), v.test_images, v.test_labels)
                         if ok else float("nan") for i, v in enumerate(vals)])
        trees.append((p, st))
    scores = [float(np.mean(a)) for a in per_task]
    seconds = time.perf_counter() - t0
    if verbose:
        shown = "  ".join(f"lr {lr:g}: {100 * a:.1f}%" for lr, a in zip(lrs, scores))
        print(f"[sweep:multitask:{sharing}] mean validation {shown} ({seconds:.1f}s)", flush=True)
    return dict(lrs=lrs, validation=scores, validation_per_task=per_task, seconds=seconds,
                program="sequential" if sequential else "vmap", trees=trees)


def tune_and_adapt(source, ds: data.Dataset, mode: str, lrs: Sequence[float], *, val_fraction: float,
                   model_cfg, optim_cfg, num_steps: int, batch_size: int, seed: int, workdir: str | None,
                   bank_path: str, log_every: int, meta: Mapping, sequential: bool = False) -> dict:
    """The protocol for one mode: sweep `lrs` on a validation split of ds's training data, retrain on all of
    it at the chosen rate, and only then read ds's test set (through `adapt`, which also writes the patch).

    Returns {'lr' (chosen), 'grid' ([{'setting', 'validation'}]), 'sweep_seconds', 'program', 'adapted'}.
    The sweep's scores are cached in workdir/sweep.json, so a resumed run does not train them again."""
    cache = os.path.join(workdir, "sweep.json") if workdir else None
    key = dict(mode=mode, lrs=[float(v) for v in lrs], num_steps=int(num_steps), batch_size=int(batch_size),
               seed=int(seed), val_fraction=float(val_fraction))
    found = _read_json(cache)
    if found and found.get("key") == key:
        scores, seconds, program = found["validation"], found["seconds"], found["program"]
    else:
        fit, val = protocol.validation_split(ds, val_fraction, seed)
        out = sweep(source, fit, val, mode, lrs, model_cfg=model_cfg, optim_cfg=optim_cfg, num_steps=num_steps,
                    batch_size=batch_size, seed=seed, sequential=sequential)
        scores, seconds, program = out["validation"], out["seconds"], out["program"]
        if cache:
            reporting.write_json(cache, dict(key=key, validation=scores, seconds=seconds, program=program))
    lr, grid = choose_rate(lrs, scores)
    adapted, _ = adapt(source, ds, mode, model_cfg=model_cfg, optim_cfg=optim.override(optim_cfg, lr=lr),
                       num_steps=num_steps, batch_size=batch_size, seed=seed,
                       workdir=os.path.join(workdir, "final") if workdir else None, bank_path=bank_path,
                       log_every=log_every, meta=meta)
    return dict(lr=lr, grid=grid, sweep_seconds=seconds, program=program, adapted=adapted)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (TypeError, OSError, ValueError):
        return None
