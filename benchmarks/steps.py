"""The train steps every speed benchmark times, built once here so each benchmark measures the same thing.

A step is forward, backward and Adam on one fixed random batch. `compiler_options=None` compiles it the
way the library does (modular.platform.xla_cpu.jit); a dict compiles it with exactly those XLA options ({} = XLA's
own defaults), for A/B comparisons.
"""
from __future__ import annotations

import argparse
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from modular import models, optim, supervised, train
from modular.platform import xla_cpu
from modular.methods import templates
from modular.models import isometric

MODELS = ("resnet20", "mobilenet_v2", "isometric", "vit")
# The plain isometric net the template-mixture benchmark compares against (stride 2: 16x16 trunk).
ISOMETRIC = dict(width=32, expansion=4, depth=8, stride=2, num_templates=0, bn="per_task")


def _model_and_loss(name: str, size: int, isometric_overrides: dict):
    """(params, model_state, loss_fn, make_batch(images, labels)) of a benchmark model with 10 classes."""
    if name == "isometric":
        cfg = isometric.default_config(**{**ISOMETRIC, **isometric_overrides})
        params, stats = isometric.init(cfg, jax.random.key(0), 3, [10])
        task = isometric.task_name(0)
        return params, stats, templates.multitask_loss(cfg, {task: None}), lambda x, y: {task: dict(image=x, label=y)}
    if name not in MODELS:
        raise ValueError(f"Unknown benchmark model {name!r}; known: {', '.join(MODELS)}.")
    cfg = common.model_config(depth=20, width=16) if name == "resnet20" else models.default_config(name)
    model = models.build(cfg, 10)
    variables = models.init(model, jax.random.key(0), (1, size, size, 3))
    params, state = models.split_variables(variables)
    return params, state, supervised.classification_loss(model), lambda x, y: dict(image=x, label=y)


def train_step(name: str, batch: int, size: int, *, compiler_options: dict | None = None,
               isometric_overrides: dict | None = None) -> tuple[Callable[[], None], float]:
    """(run, flops): `run()` performs one step and waits for it (already run once); flops per step by XLA's
    cost analysis. `isometric_overrides` change ISOMETRIC's settings (e.g. num_templates) for 'isometric'."""
    params, model_state, loss_fn, make_batch = _model_and_loss(name, size, isometric_overrides or {})
    tx = optim.build(common.optim_config(name="adam"), params, 100)
    fn = train.make_train_step(loss_fn, tx)
    if compiler_options is None:
        step = xla_cpu.jit(fn, donate_argnums=(0,))
    else:
        step = jax.jit(fn, donate_argnums=(0,), compiler_options=compiler_options or None)
    rng = np.random.default_rng(0)
    data = make_batch(jnp.asarray(rng.random((batch, size, size, 3), np.float32)),
                      jnp.asarray(rng.integers(0, 10, batch), jnp.int32))
    key = jax.random.key(0)
    holder = {"state": train.TrainState.create(params, model_state, tx)}
    cost = step.lower(holder["state"], data, key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0)) if cost else 0.0

    def run() -> None:
        holder["state"], metrics = step(holder["state"], data, key)
        jax.block_until_ready(metrics)

    run()  # compile and warm up here, inside whatever tracing context the caller set (fusion.disabled)
    return run, flops


def arg_parser(doc: str, *, models: str | None, steps: int, rounds: int, steps_help: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes (batch, image size, steps, rounds; models where it compares models)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if models is not None:
        parser.add_argument("--models", default=models)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=steps, help=steps_help)
    parser.add_argument("--rounds", type=int, default=rounds)
    return parser
