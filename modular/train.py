"""The training loop every method shares: jitted, data-parallel, checkpointed, resumable, NaN-safe.

A method supplies a pure loss function and a deterministic `batch_fn(step)`; the loop owns everything
else. Because the batch and the dropout/augmentation key are pure functions of the step, a run killed
at any moment and restarted on the same workdir ends with exactly the result of an uninterrupted run.

`train_subtrees` is what methods call: one rule list says which subtrees train (and at which learning-rate
multiple); the optimizer and the stop-gradient mask are both built from it, and the compiled step is
reused by every later call with the same loss function, rules and shapes.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

import ml_collections

from modular import checkpoint, compiled, loss_contract, optim, parallel, reporting, scalars, settings
from modular import params as P
from modular.platform import xla_cpu

# loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics)); see modular/loss_contract.py
LossFn = Callable[[Any, Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Any, dict]]]


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf, or diverged; the last good checkpoint is kept."""


# A loss above `settings.current().divergence_factor` times the median of the losses seen so far (this
# process's first step included) stops the run before it saves: a diverged state never replaces a good
# checkpoint. 0 turns the check off. experiments.run sets it from `config.divergence_factor`.
HISTORY_FILE = "history.json"
_STOP = threading.Event()
_PENDING_INTERRUPT = threading.Event()
_IN_LOOP = threading.Event()     # a fit loop is running: Ctrl-C waits for its step boundary


def stop_between_steps_on_sigint() -> None:
    """Make Ctrl-C (SIGINT) stop a running `fit` at the next step boundary, where no checkpoint save is in
    flight (KeyboardInterrupt is raised there, after pending saves land); a second Ctrl-C, or one outside
    `fit`, interrupts at once. Call from the main thread of a driver (experiments.run does)."""
    def handler(signum, frame):
        if _IN_LOOP.is_set() and not _STOP.is_set():
            _STOP.set()
            return
        _PENDING_INTERRUPT.set()   # sticky: a library that swallows the KeyboardInterrupt cannot lose it
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = _quiet_kept_interrupts(sys.unraisablehook)


def _quiet_kept_interrupts(default_hook):
    """A Ctrl-C that lands inside a callback Python cannot raise from (e.g. jax's garbage-collection callback)
    is "Exception ignored" with a traceback on stderr; it is kept in `_PENDING_INTERRUPT` and honoured at the
    next check, so it is not printed. Anything else goes to `default_hook`."""
    if getattr(default_hook, "_keeps_interrupts", False):
        return default_hook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and _PENDING_INTERRUPT.is_set():
            return
        default_hook(unraisable)
    hook._keeps_interrupts = True
    return hook


def interrupt_pending() -> bool:
    """True once Ctrl-C arrived outside a step loop (even if the KeyboardInterrupt was caught and dropped)."""
    return _PENDING_INTERRUPT.is_set()


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, model_state: Any, tx: optax.GradientTransformation,
               opt_state: Any = None) -> "TrainState":
        """Step 0; `opt_state` is `tx.init(params)` unless given (e.g. `optim.initial_state`, the same values)."""
        return cls(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                   opt_state=tx.init(params) if opt_state is None else opt_state)

    def as_dict(self) -> dict:
        return dict(step=self.step, params=self.params, model_state=self.model_state, opt_state=self.opt_state)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, trainable: Any | None = None,
                    stats_update: Any | None = None):
    """One optimizer step. Frozen leaves (trainable=False) are wrapped in stop_gradient, so XLA computes
    no weight gradient for them, and the optimizer (built from the same rules) keeps no state for them.
    Model-state leaves whose `stats_update` is False (the statistics of frozen modules) keep their values.

    The loss is checked against `loss_contract.SIGNATURE` when the step is traced: a wrong signature, return
    value or a model state that changes structure is one sentence, not a run that recompiles every step."""
    loss_contract.check_signature(loss_fn)

    def step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        def objective(params):
            if trainable is not None:
                params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
            return loss_contract.check_output(loss_fn, loss_fn(params, state.model_state, batch, rng))

        (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        model_state = loss_contract.same_structure_state(loss_fn, state.model_state, model_state)
        if stats_update is not None:
            model_state = jax.tree.map(lambda new, old, u: new if u else old, model_state, state.model_state,
                                       stats_update)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads))
        new = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
        return new, metrics

    return step


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict]          # metrics at each log step (host floats)
    resumed_from: int | None     # checkpoint step the run continued from, if any
    seconds: float               # wall time of the steps this process ran


def _fmt_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def fit(*, state: TrainState, loss_fn: LossFn, tx: optax.GradientTransformation,
        batch_fn: Callable[[int], Mapping[str, np.ndarray]], num_steps: int, seed: int = 0,
        trainable: Any | None = None, workdir: str | None = None, checkpoint_every: int = 0,
        log_every: int = 50, eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None,
        eval_every: int = 0, name: str = "train", mesh: jax.sharding.Mesh | None = None,
        verbose: bool = True, step_fn: Callable | None = None) -> FitResult:
    """Run `num_steps` optimizer steps (resuming from `workdir`'s last checkpoint if there is one).

    workdir: TensorBoard events and orbax checkpoints go under it (None: in-memory only).
    checkpoint_every: save period in steps (0: only at the end); the final state is always saved.
    eval_fn: called on the state every `eval_every` steps and at the end; its scalars are logged.
    step_fn: an already jitted `make_train_step(loss_fn, tx, trainable)` to reuse (train_subtrees passes it).

    The loop is the pieces below: `_restore`, then per step the batch, the step and, at log/save points,
    `_check_loss`, `_log_step`, `_log_eval` and `_save`; `_abort` or `_finish` at the end.
    """
    mesh = mesh or parallel.make_mesh()
    is_main = jax.process_index() == 0
    state = parallel.replicate(state, mesh)
    step_fn = step_fn or xla_cpu.jit(make_train_step(loss_fn, tx, trainable), donate_argnums=(0,))
    base_rng = jax.random.key(seed)
    run = _restore(state, workdir, checkpoint_every or num_steps, name, verbose and is_main)
    state = run.state
    if workdir and is_main:   # TensorBoard scalars (steps/s among them) from the first process only
        run.writer = scalars.ScalarWriter(workdir)

    start = int(parallel.to_host(state.step))
    t0 = time.time()
    run.last_t, run.last_step = t0, start
    _STOP.clear()
    if _PENDING_INTERRUPT.is_set():
        raise KeyboardInterrupt("interrupted before training started")
    _IN_LOOP.set()
    try:
        for step in range(start, num_steps):
            if _STOP.is_set():
                raise KeyboardInterrupt(f"stopped before step {step + 1}")
            if run.mngr is not None:   # a failed background save stops training at once, not a few saves later
                checkpoint.raise_save_errors(run.mngr, run.mngr.check_for_errors, name)
            batch = parallel.shard_batch(dict(batch_fn(step)), mesh)
            state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
            done = step + 1
            must_save = run.mngr is not None and (done == num_steps or
                                                  (checkpoint_every and done % checkpoint_every == 0))
            must_log = done == num_steps or (log_every and done % log_every == 0)
            if must_save or must_log or step == start:  # the first step's loss is the divergence reference
                host = {k: float(v) for k, v in parallel.to_host(metrics).items()}
                _check_loss(run, host, done, name)
                if must_log:
                    _log_step(run, host, done, num_steps, name, verbose and is_main)
                if eval_fn is not None and eval_every and done % eval_every == 0 and done != num_steps:
                    _log_eval(eval_fn(state), done, name, run.writer, verbose and is_main)
                if must_save:
                    _save(run, state, done, name, workdir if is_main else None)
    except BaseException:
        _IN_LOOP.clear()
        _abort(run)
        raise
    _IN_LOOP.clear()
    _finish(run, state, start, num_steps, name, workdir if is_main else None)
    if eval_fn is not None:
        _log_eval(eval_fn(state), num_steps, name, run.writer, verbose and is_main)
    if run.writer:
        run.writer.flush()
        run.writer.close()
    return FitResult(state=state, history=run.history, resumed_from=run.resumed_from, seconds=time.time() - t0)


@dataclasses.dataclass
class _Run:
    """What one `fit` call carries between its pieces: the checkpoint manager, the writers, the history
    and the losses seen (the divergence check's reference)."""
    state: TrainState
    mngr: Any = None
    resumed_from: int | None = None
    history: list = dataclasses.field(default_factory=list)
    writer: Any = None
    last_good: int | None = None
    seen_losses: list = dataclasses.field(default_factory=list)
    last_t: float = 0.0
    last_step: int = 0


def _restore(state: TrainState, workdir: str | None, save_every: int, name: str, verbose: bool) -> _Run:
    """The state to start from: `state`, or the workdir's newest checkpoint with the history logged up to it
    (earlier attempts' losses count towards the divergence reference)."""
    run = _Run(state=state)
    if not workdir:
        return run
    run.mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), save_every=save_every)
    restored = checkpoint.restore_latest(run.mngr, state.as_dict())
    if restored is not None:
        run.state, run.resumed_from = TrainState(**restored[0]), restored[1]
        run.history = [h for h in _read_history(workdir) if h.get("step", 0) <= run.resumed_from]
        if verbose:
            print(f"[{name}] resuming from checkpoint step {run.resumed_from} in {workdir}", flush=True)
    run.last_good = run.resumed_from
    run.seen_losses = [float(h["loss"]) for h in run.history if "loss" in h]
    return run


def _check_loss(run: _Run, host: Mapping[str, float], done: int, name: str) -> None:
    """Stop (without saving) on a non-finite loss or gradient, or a loss that diverged from this run's median."""
    where = f"step {run.last_good} in {run.mngr.directory}" if (run.mngr and run.last_good) else "none was saved"
    if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
        raise NonFiniteLossError(
            f"[{name}] loss became {host['loss']} (grad norm {host['grad_norm']}) by step {done}; "
            f"stopping. Last good checkpoint: {where}.")
    run.seen_losses.append(host["loss"])
    reference = float(np.median(run.seen_losses))
    factor = settings.current().divergence_factor
    if factor and host["loss"] > factor * max(reference, 1e-6) and len(run.seen_losses) > 1:
        raise NonFiniteLossError(
            f"[{name}] loss {host['loss']:.4g} at step {done} is over {factor:g}x the median "
            f"{reference:.4g} of this run's earlier losses: the run diverged; stopping without saving. "
            f"Last good checkpoint: {where}.")


def _log_step(run: _Run, host: dict, done: int, num_steps: int, name: str, verbose: bool) -> None:
    """The step's metrics with steps/s into the history, TensorBoard and (verbose) one line with the ETA."""
    now = time.time()
    rate = (done - run.last_step) / max(now - run.last_t, 1e-9)
    run.last_t, run.last_step = now, done
    host["steps_per_sec"] = rate
    run.history.append(dict(step=done, **host))
    if run.writer:
        run.writer.write_scalars(done, {f"{name}/{k}": v for k, v in host.items()})
    if verbose:
        shown = " ".join(f"{k} {v:.4g}" for k, v in host.items() if k not in ("steps_per_sec",))
        print(f"[{name}] step {done}/{num_steps} {shown} | {rate:.1f} steps/s, "
              f"ETA {_fmt_eta((num_steps - done) / max(rate, 1e-9))}", flush=True)


def _save(run: _Run, state: TrainState, done: int, name: str, history_dir: str | None) -> None:
    """A checkpoint at step `done` (asynchronous) and the history beside it."""
    checkpoint.raise_save_errors(
        run.mngr, lambda: run.mngr.save(done, args=checkpoint.ocp.args.StandardSave(state.as_dict())), name)
    run.last_good = done
    if history_dir:
        _write_history(history_dir, run.history)


def _abort(run: _Run) -> None:
    """On an exception or Ctrl-C: let pending asynchronous saves land, close the writers."""
    if run.mngr is not None:
        try:
            run.mngr.wait_until_finished()
            run.mngr.close()
        except Exception:   # a save failing too: the error being raised already says what matters
            pass
    if run.writer:
        run.writer.close()


def _finish(run: _Run, state: TrainState, start: int, num_steps: int, name: str, history_dir: str | None) -> None:
    """The final state saved (also when it was never saved in the loop) and every save landed."""
    mngr = run.mngr
    if mngr is None:
        return
    if mngr.latest_step() != num_steps and start < num_steps:
        checkpoint.raise_save_errors(
            mngr, lambda: mngr.save(num_steps, args=checkpoint.ocp.args.StandardSave(state.as_dict()), force=True),
            name)
    checkpoint.raise_save_errors(mngr, mngr.wait_until_finished, name)
    mngr.close()
    if history_dir:
        _write_history(history_dir, run.history)


def _read_history(workdir: str) -> list[dict]:
    """The logged metrics of earlier attempts in `workdir` ([] when there are none or they are unreadable)."""
    try:
        with open(os.path.join(workdir, HISTORY_FILE)) as f:
            return [dict(h) for h in json.load(f)]
    except (OSError, ValueError, TypeError):
        return []


def _write_history(workdir: str, history: list[dict]) -> None:
    """Saved beside the checkpoints, so a resumed (or re-run finished) fit reports its whole history."""
    reporting.write_json(os.path.join(workdir, HISTORY_FILE), history)


def _log_eval(metrics: Mapping[str, float], step: int, name: str, writer, verbose: bool) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    if writer:
        writer.write_scalars(step, {f"{name}/eval_{k}": v for k, v in metrics.items()})
    if verbose:
        print(f"[{name}] eval at step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


@dataclasses.dataclass
class Trained:
    """What `train_subtrees` returns: host (numpy) trees and what it cost."""
    params: Any
    model_state: Any
    fit: FitResult
    trainable: int               # parameters that trained (mask True)
    optimizer_state_size: int    # values the optimizer kept (frozen subtrees keep none)


_COMPILED_STEPS = compiled.ProgramCache(maxsize=32)


def _compiled_step(loss_fn: LossFn, cfg: ml_collections.ConfigDict, params: Any, num_steps: int,
                   model_state: Any = None, update_frozen_stats: bool = True):
    """(tx, trainable mask, statistics mask, jitted step) for `cfg` on `params`' structure. The step is reused
    by any later call with the same loss function object, optimizer program (`optim.program_key`: everything
    but the learning rate, the rules by the multipliers they give each parameter), statistics mask and trees;
    the learning rate and the step count live in the optimizer state that `tx.init` makes, so a grid over them
    compiles once. Loss factories memoise their results so equal arguments give one object."""
    tx = optim.build(cfg, params, num_steps)   # this call's rate and length, for its state
    stats = None if update_frozen_stats else optim.stats_update_mask(params, model_state, cfg)
    kept = None if stats is None or all(jax.tree.leaves(stats)) else tuple(jax.tree.leaves(stats))  # None: all update
    key = (loss_fn, optim.program_key(cfg, params), compiled.tree_signature(params), jax.tree.structure(model_state),
           kept)

    def build():
        mask = optim.trainable_mask(params, cfg)
        return mask, stats, xla_cpu.jit(make_train_step(loss_fn, tx, mask, stats), donate_argnums=(0,))

    return (tx,) + _COMPILED_STEPS.get(key, build)


def train_subtrees(params: Any, model_state: Any, *, loss_fn: LossFn, optim_cfg: ml_collections.ConfigDict,
                   batch_fn: Callable[[int], Mapping[str, Any]], num_steps: int, rules: Any = None,
                   default_mult: float | None = None, seed: int = 0, name: str = "train",
                   workdir: str | None = None, checkpoint_every: int = 0, log_every: int = 50,
                   eval_fn: Callable[[TrainState], Mapping[str, float]] | None = None, eval_every: int = 0,
                   show_table: bool = False, verbose: bool = True, update_frozen_stats: bool = False) -> Trained:
    """Train the subtrees of `params` that `rules` select, everything else frozen, and return host trees.

    model_state: the model's variables without 'params' (`models.split_variables`), e.g. {'batch_stats': ...};
    the loss must return it in the same structure (`loss_contract.SIGNATURE`).
    rules: ordered `[(regex, lr multiplier)]` over `/`-joined paths (0 freezes; unmatched paths get
    `default_mult`); None keeps `optim_cfg.lr_mults`/`default_mult`. Every rule must match a parameter. The
    same rules build the optimizer (frozen subtrees keep no state), the stop-gradient mask (no gradient is
    computed for them) and, unless `update_frozen_stats`, the statistics mask: a frozen module's BatchNorm
    statistics stay as they are even when the loss runs BatchNorm in train mode. Training nothing is an error.
    """
    fields = {}
    if rules is not None:
        fields["lr_mults"] = [tuple(r) for r in rules]
    if default_mult is not None:
        fields["default_mult"] = float(default_mult)
    cfg = optim.override(optim_cfg, **fields) if fields else optim_cfg
    tx, mask, stats_mask, step_fn = _compiled_step(loss_fn, cfg, params, num_steps, model_state,
                                                   update_frozen_stats)
    if num_steps > 0 and not any(jax.tree.leaves(mask)):
        raise ValueError(f"[{name}] no parameter trains: the rules {cfg.get('lr_mults', [])} with default "
                         f"multiplier {cfg.get('default_mult', 1.0)} freeze all {len(P.paths(params))} parameters.")
    if show_table and verbose and jax.process_index() == 0:
        print(optim.trainable_table(params, cfg, title=f"[{name}] parameters"), flush=True)
        if jax.tree.leaves(model_state):
            shown = stats_mask if stats_mask is not None else jax.tree.map(lambda _: True, model_state)
            print(optim.stats_table(model_state, shown, title=f"[{name}] model state (BatchNorm statistics)"),
                  flush=True)
    state = TrainState.create(params, model_state, tx, opt_state=optim.initial_state(cfg, params, num_steps))
    result = fit(state=state, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn,
                 num_steps=num_steps, seed=seed, trainable=mask, workdir=workdir, checkpoint_every=checkpoint_every,
                 log_every=log_every, eval_fn=eval_fn, eval_every=eval_every, name=name, verbose=verbose,
                 step_fn=step_fn)
    host_params, host_state = jax.tree.map(np.asarray, jax.device_get((result.state.params, result.state.model_state)))
    return Trained(params=host_params, model_state=host_state, fit=result,
                   trainable=optim.trainable_count(params, mask),
                   optimizer_state_size=optim.state_size(result.state.opt_state))


def predict(apply_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array], variables: Any,
            images: np.ndarray, *, batch_size: int = 500, mesh: jax.sharding.Mesh | None = None) -> np.ndarray:
    """apply_fn(variables, batch) -> outputs, over a whole array in fixed-size padded batches."""
    mesh = mesh or parallel.make_mesh()
    n = len(images)
    batch_size = max(jax.device_count(), min(batch_size, -(-n // jax.device_count()) * jax.device_count()))
    batch_size -= batch_size % jax.device_count()
    fn = xla_cpu.jit(apply_fn)
    outs = []
    for i in range(0, n, batch_size):
        chunk = images[i:i + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out = parallel.to_host(fn(variables, parallel.shard_batch({"image": chunk}, mesh)))
        outs.append(jax.tree.map(lambda o: o[: batch_size - pad], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def accuracy(apply_fn: Callable[[Any, Mapping[str, jax.Array]], jax.Array], variables: Any,
             images: np.ndarray, labels: np.ndarray, **kw) -> float:
    logits = predict(apply_fn, variables, images, **kw)
    return float(np.mean(np.argmax(logits, -1) == labels))
