"""Training throughput of one of our train steps against this machine's measured matmul peak.

  python -m benchmarks.throughput [--model resnet20] [--batch 128] [--size 32] [--steps 20]

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

from benchmarks import steps
from modular import platform


def matmul_flops_per_sec(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    out.block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=steps.MODELS)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    # Before anything starts JAX (see modular.platform).
    host = platform.tune_cpu() or ["library defaults (MODULAR_CPU_TUNING=off)"]
    peak = matmul_flops_per_sec()
    run, flops = steps.train_step(args.model, args.batch, args.size)
    t = time.perf_counter()
    for _ in range(args.steps):
        run()
    seconds = time.perf_counter() - t
    achieved = flops * args.steps / seconds
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; host: {'; '.join(host)}")
    print(f"matmul 2048x2048 f32: {peak / 1e9:.1f} GFLOP/s")
    print(f"{args.model} train step, batch {args.batch}, {args.size}x{args.size}x3, Adam: "
          f"{args.batch * args.steps / seconds:.1f} images/s, {achieved / 1e9:.1f} GFLOP/s = "
          f"{100 * achieved / peak:.1f}% of matmul peak")


if __name__ == "__main__":
    main()
