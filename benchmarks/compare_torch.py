"""Our train step against the same model in PyTorch eager, measured in one run.

  pip install torch==2.13.0        # optional benchmark dependency (CPU build), or: pip install -e '.[bench]'
  python -m benchmarks.compare_torch [--models resnet20,mobilenet_v2,isometric] [--batch 128] [--size 32] [--steps 10]

For each model: images/s of a full training step (forward, backward, Adam) in modular (jax.jit) and in
PyTorch, their ratio, and each one's fraction of the machine's measured matmul FLOP/s. The two
frameworks are timed in alternating rounds so that load from other processes hits both alike, in one
process with the same CPU settings (modular.platform.tune_cpu(); MODULAR_CPU_TUNING=off for none).
"""
from __future__ import annotations

import time

import jax

from benchmarks import steps
from benchmarks.throughput import matmul_flops_per_sec
from modular import platform


def torch_step_fn(name: str, batch: int, size: int):
    import torch
    from benchmarks import torch_models

    torch.manual_seed(0)
    if name == "isometric":
        model = torch_models.isometric(**{k: steps.ISOMETRIC[k] for k in ("width", "expansion", "depth", "stride")})
    else:
        model = torch_models.resnet20() if name == "resnet20" else torch_models.mobilenet_v2()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return run


def timed(fn, steps: int) -> float:
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return time.perf_counter() - t


def main() -> None:
    parser = steps.arg_parser(__doc__, models="resnet20,mobilenet_v2,isometric", steps=10, rounds=3,
                              steps_help="steps per timed round")
    args = parser.parse_args()
    # Before anything starts JAX (see modular.platform).
    host = platform.tune_cpu() or ["library defaults (MODULAR_CPU_TUNING=off)"]
    try:
        import torch
    except ImportError:
        raise SystemExit("PyTorch is not installed: pip install torch==2.13.0 (an optional benchmark dependency).")
    peak = matmul_flops_per_sec()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); matmul peak {peak / 1e9:.1f} GFLOP/s; host: {'; '.join(host)}")
    for name in args.models.split(","):
        ours, flops = steps.train_step(name, args.batch, args.size)
        theirs = torch_step_fn(name, args.batch, args.size)
        theirs()  # warm-up (allocator); ours ran once when built
        t_ours = t_theirs = 0.0
        for _ in range(args.rounds):
            t_ours += timed(ours, args.steps)
            t_theirs += timed(theirs, args.steps)
        n = args.steps * args.rounds * args.batch
        ips_ours, ips_theirs = n / t_ours, n / t_theirs
        frac = lambda ips: 100 * flops * ips / args.batch / peak
        print(f"{name:>13}: modular {ips_ours:8.1f} img/s ({frac(ips_ours):4.1f}% of peak) | "
              f"pytorch {ips_theirs:8.1f} img/s ({frac(ips_theirs):4.1f}% of peak, same FLOPs) | "
              f"ratio modular/pytorch {ips_ours / ips_theirs:.2f}")


if __name__ == "__main__":
    main()
