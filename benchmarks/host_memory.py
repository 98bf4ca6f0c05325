"""Train steps with and without modular.host_memory's settings, each in its own process, in one run.

  python -m benchmarks.host_memory [--models resnet20,mobilenet_v2,isometric] [--steps 10] [--rounds 2]

The settings are process-wide and must precede JAX's backend, so every measurement is a fresh child
process; the two settings alternate, round after round, so that load from other processes hits both
alike. Prints images/s, kernel (system) CPU time and page faults per step, and the speedup.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODES = {"defaults": {"MODULAR_HOST_MEMORY": "default"}, "reuse": {}}


def child(name: str, batch: int, size: int, steps_per_round: int) -> dict:
    """Runs in the child process: host settings from the environment, then timed train steps."""
    from modular.platform import host_memory
    applied = host_memory.reuse_freed_memory()
    from benchmarks import steps
    run, _ = steps.train_step(name, batch, size)
    for _ in range(2):
        run()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps_per_round):
        run()
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"applied": applied, "images_per_s": batch * steps_per_round / seconds,
            "sys_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / steps_per_round,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps_per_round}


def measure(name: str, mode: str, args) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.host_memory", "--child", name, "--batch", str(args.batch),
           "--size", str(args.size), "--steps", str(args.steps)]
    env = {k: v for k, v in os.environ.items() if k != "MODULAR_HOST_MEMORY"}
    out = subprocess.run(cmd, env={**env, **MODES[mode]}, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"The {mode} child for {name} failed: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    from benchmarks import steps  # the parent only parses flags: JAX never starts here
    parser = steps.arg_parser(__doc__, models="resnet20,mobilenet_v2,isometric", steps=10, rounds=2,
                              steps_help="timed steps per child process")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.size, args.steps)))
        return
    for name in args.models.split(","):
        runs = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(measure(name, mode, args))
        mean = {mode: {k: statistics.mean(r[k] for r in rs) for k in rs[0] if k != "applied"}
                for mode, rs in runs.items()}
        cells = [f"{mode} {m['images_per_s']:6.1f} img/s (sys {m['sys_ms_per_step']:5.1f} ms, "
                 f"{m['faults_per_step']:6.0f} faults per step)" for mode, m in mean.items()]
        speedup = mean["reuse"]["images_per_s"] / mean["defaults"]["images_per_s"]
        print(f"{name:>13}: {' | '.join(cells)} | speedup {speedup:.2f}x", flush=True)
    print(f"reuse = {'; '.join(runs['reuse'][0]['applied']) or 'nothing applicable on this platform'}")


if __name__ == "__main__":
    main()
