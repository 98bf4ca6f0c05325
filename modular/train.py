"""The training loop every method shares: jitted, data-parallel, checkpointed, resumable, NaN-safe.

A method supplies a pure loss function and a deterministic `batch_fn(step)`; the loop owns everything
else. Because the batch and the dropout/augmentation key are pure functions of the step, a run killed
at any moment and restarted on the same workdir ends with exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from modular import checkpoint, parallel, xla_cpu

# loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))
LossFn = Callable[[Any, Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, tuple[Any, dict]]]


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any

    @classmethod
    def create(cls, params: Any, model_state: Any, tx: optax.GradientTransformation) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state, opt_state=tx.init(params))

    def as_dict(self) -> dict:
        return dict(step=self.step, params=self.params, model_state=self.model_state, opt_state=self.opt_state)


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, trainable: Any | None = None):
    """One optimizer step. Frozen leaves (trainable=False) are wrapped in stop_gradient, so XLA computes
    no weight gradient for them, and the optimizer (built from the same rules) keeps no state for them."""

    def step(state: TrainState, batch: Mapping[str, jax.Array], rng: jax.Array):
        def objective(params):
            if trainable is not None:
                params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
            return loss_fn(params, state.model_state, batch, rng)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
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
        verbose: bool = True) -> FitResult:
    """Run `num_steps` optimizer steps (resuming from `workdir`'s last checkpoint if there is one).

    workdir: TensorBoard events and orbax checkpoints go under it (None: in-memory only).
    checkpoint_every: save period in steps (0: only at the end); the final state is always saved.
    eval_fn: called on the state every `eval_every` steps and at the end; its scalars are logged.
    """
    mesh = mesh or parallel.make_mesh()
    is_main = jax.process_index() == 0
    state = parallel.replicate(state, mesh)
    step_fn = xla_cpu.jit(make_train_step(loss_fn, tx, trainable), donate_argnums=(0,))
    base_rng = jax.random.key(seed)

    mngr, resumed_from = None, None
    if workdir:
        mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"), save_every=checkpoint_every or num_steps)
        restored = checkpoint.restore_latest(mngr, state.as_dict())
        if restored is not None:
            state, resumed_from = TrainState(**restored[0]), restored[1]
            if verbose and is_main:
                print(f"[{name}] resuming from checkpoint step {resumed_from} in {workdir}", flush=True)
    writer = progress = None
    if workdir:
        from clu import metric_writers, periodic_actions  # imports TensorFlow: only when writing to a workdir
        writer = metric_writers.create_default_writer(workdir, just_logging=not is_main, asynchronous=False)
        progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)

    history: list[dict] = []
    start = int(parallel.to_host(state.step))
    last_good = resumed_from
    t0 = time.time()
    last_t, last_step = t0, start
    try:
        for step in range(start, num_steps):
            batch = parallel.shard_batch(dict(batch_fn(step)), mesh)
            state, metrics = step_fn(state, batch, jax.random.fold_in(base_rng, step))
            done = step + 1
            if progress is not None:
                progress(done)
            must_save = mngr is not None and (done == num_steps or (checkpoint_every and done % checkpoint_every == 0))
            must_log = done == num_steps or (log_every and done % log_every == 0)
            if must_save or must_log:
                host = {k: float(v) for k, v in parallel.to_host(metrics).items()}
                if not (np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])):
                    where = f"step {last_good} in {mngr.directory}" if (mngr and last_good) else "none was saved"
                    raise NonFiniteLossError(
                        f"[{name}] loss became {host['loss']} (grad norm {host['grad_norm']}) by step {done}; "
                        f"stopping. Last good checkpoint: {where}.")
                if must_log:
                    now = time.time()
                    rate = (done - last_step) / max(now - last_t, 1e-9)
                    last_t, last_step = now, done
                    host["steps_per_sec"] = rate
                    history.append(dict(step=done, **host))
                    if writer:
                        writer.write_scalars(done, {f"{name}/{k}": v for k, v in host.items()})
                    if verbose and is_main:
                        shown = " ".join(f"{k} {v:.4g}" for k, v in host.items() if k not in ("steps_per_sec",))
                        print(f"[{name}] step {done}/{num_steps} {shown} | {rate:.1f} steps/s, "
                              f"ETA {_fmt_eta((num_steps - done) / max(rate, 1e-9))}", flush=True)
                if eval_fn is not None and eval_every and done % eval_every == 0 and done != num_steps:
                    _log_eval(eval_fn(state), done, name, writer, verbose and is_main)
                if must_save:
                    mngr.save(done, args=checkpoint.ocp.args.StandardSave(state.as_dict()))
                    last_good = done
    except BaseException:
        if mngr is not None:  # an exception or Ctrl-C still lets pending async saves land
            mngr.wait_until_finished()
            mngr.close()
        raise
    if mngr is not None:
        if mngr.latest_step() != num_steps and start < num_steps:
            mngr.save(num_steps, args=checkpoint.ocp.args.StandardSave(state.as_dict()), force=True)
        mngr.wait_until_finished()
        mngr.close()
    if eval_fn is not None:
        _log_eval(eval_fn(state), num_steps, name, writer, verbose and is_main)
    if writer:
        writer.flush()
        writer.close()
    return FitResult(state=state, history=history, resumed_from=resumed_from, seconds=time.time() - t0)


def _log_eval(metrics: Mapping[str, float], step: int, name: str, writer, verbose: bool) -> None:
    metrics = {k: float(v) for k, v in metrics.items()}
    if writer:
        writer.write_scalars(step, {f"{name}/eval_{k}": v for k, v in metrics.items()})
    if verbose:
        print(f"[{name}] eval at step {step}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)


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
