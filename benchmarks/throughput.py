"""Training throughput of our ResNet step against this machine's measured matmul peak.

  python -m benchmarks.throughput [--depth 20] [--batch 128] [--size 32] [--steps 20]

Prints images/s of a full train step (forward, backward, Adam) and the fraction of the machine's
measured dense-matmul FLOP/s it reaches (model FLOPs counted by XLA's cost analysis). Both numbers come
from one run, so the ratio is meaningful on a shared, noisy machine; absolute figures are not.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import common
from modular import models, optim, supervised, train


def matmul_flops_per_sec(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def train_step_throughput(depth: int, batch: int, size: int, steps: int, width: int = 16) -> tuple[float, float]:
    """(images/s, achieved FLOP/s) of jitted ResNet train steps on random data."""
    model = models.build(common.model_config(depth=depth, width=width), 10)
    variables = models.init(model, jax.random.key(0), (1, size, size, 3))
    params, model_state = variables["params"], {"batch_stats": variables["batch_stats"]}
    tx = optim.build(common.optim_config(name="adam"), params, steps)
    step = jax.jit(train.make_train_step(supervised.classification_loss(model), tx), donate_argnums=(0,))
    state = train.TrainState.create(params, model_state, tx)
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.random((batch, size, size, 3), np.float32)),
             "label": jnp.asarray(rng.integers(0, 10, batch), jnp.int32)}
    key = jax.random.key(0)
    compiled = step.lower(state, data, key).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_per_step = float(cost.get("flops", 0.0)) if cost else 0.0
    state, m = step(state, data, key)  # warm-up
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, data, key)
    jax.block_until_ready(m)
    seconds = time.perf_counter() - t
    return batch * steps / seconds, flops_per_step * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    peak = matmul_flops_per_sec()
    images_per_sec, achieved = train_step_throughput(args.depth, args.batch, args.size, args.steps)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}")
    print(f"matmul 2048x2048 f32: {peak / 1e9:.1f} GFLOP/s")
    print(f"ResNet-{args.depth} train step, batch {args.batch}, {args.size}x{args.size}x3, Adam: "
          f"{images_per_sec:.1f} images/s, {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of matmul peak")


if __name__ == "__main__":
    main()
