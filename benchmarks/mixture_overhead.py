"""Cost of generating layer weights from template mixtures: mixture model vs plain isometric net.

  python -m benchmarks.mixture_overhead [--depth 8] [--templates 4] [--width 32] [--batch 128] [--size 32]

Both models have the same depth and block shapes; the mixture model adds one einsum per batch that
builds all L layers' weights from K templates (and its gradient). Prints the step time of each and
their ratio; the paper's claim is that the ratio stays close to 1. Both are timed in one process,
interleaved, so the ratio is meaningful on a shared machine even when absolute times are not.
"""
from __future__ import annotations

import argparse
import time

import jax

from benchmarks import steps
from modular import platform


def step_seconds(num_templates: int, args) -> callable:
    """A function running `args.steps` jitted train steps of one model, returning seconds per step."""
    run, _ = steps.train_step("isometric", args.batch, args.size, isometric_overrides=dict(
        width=args.width, expansion=args.expansion, depth=args.depth, stride=args.stride,
        num_templates=num_templates))

    def timed():
        t = time.perf_counter()
        for _ in range(args.steps):
            run()
        return (time.perf_counter() - t) / args.steps
    return timed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--templates", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--stride", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    # Before anything starts JAX (see modular.platform).
    host = platform.tune_cpu() or ["library defaults (MODULAR_CPU_TUNING=off)"]
    if args.templates < 1:
        raise SystemExit("--templates must be at least 1.")
    plain, mixed = step_seconds(0, args), step_seconds(args.templates, args)
    times = {"plain": [], "mixture": []}
    for _ in range(args.repeats):  # interleaved so machine load hits both alike
        times["plain"].append(plain())
        times["mixture"].append(mixed())
    best = {k: min(v) for k, v in times.items()}
    print(f"host: {'; '.join(host)}")
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}; depth {args.depth}, K {args.templates}, "
          f"width {args.width}x{args.expansion}, batch {args.batch}, {args.size}px")
    for k, v in best.items():
        print(f"{k:8s} {1000 * v:8.2f} ms/step  {args.batch / v:9.1f} images/s")
    print(f"ratio mixture/plain step time: {best['mixture'] / best['plain']:.3f}")


if __name__ == "__main__":
    main()
