"""What the two XLA:CPU measures of modular.platform buy, per model, measured in one run.

  python -m benchmarks.xla_cpu_options [--models resnet20,mobilenet_v2,isometric,vit] [--rounds 3]

Four builds of each train step: XLA's defaults with the fusion boundaries traced out, boundaries only,
compiler options only (modular.xla_cpu), and both (what the library does now). The depthwise kernel
gradient's cache blocking (modular.models.depthwise) is in all four. Builds are timed in alternating
rounds; ratios are images/s against the first build.
"""
from __future__ import annotations

import time

from benchmarks import steps
from modular import platform
from modular.platform import xla_cpu
from modular.platform import fusion


def main() -> None:
    parser = steps.arg_parser(__doc__, models=",".join(steps.MODELS), steps=4, rounds=3,
                              steps_help="steps per timed round")
    args = parser.parse_args()
    # Before anything starts JAX (see modular.platform).
    host = platform.tune_cpu() or ["library defaults (MODULAR_CPU_TUNING=off)"]
    options = xla_cpu.compiler_options()
    print(f"library compiler options: {options or 'none (not CPU, or this jaxlib lacks them)'}; host: {'; '.join(host)}")
    for name in args.models.split(","):
        builds = {}
        with fusion.disabled():
            builds["XLA defaults"] = steps.train_step(name, args.batch, args.size, compiler_options={})[0]
            builds["options only"] = steps.train_step(name, args.batch, args.size, compiler_options=options)[0]
        builds["boundaries only"] = steps.train_step(name, args.batch, args.size, compiler_options={})[0]
        builds["both (library)"] = steps.train_step(name, args.batch, args.size)[0]
        seconds = dict.fromkeys(builds, 0.0)
        for _ in range(args.rounds):
            for label, run in builds.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    run()
                seconds[label] += time.perf_counter() - t
        n = args.batch * args.steps * args.rounds
        base = n / seconds["XLA defaults"]
        print(f"{name}: " + " | ".join(f"{label} {n / s:7.1f} img/s ({n / s / base:.2f}x)"
                                        for label, s in seconds.items()), flush=True)


if __name__ == "__main__":
    main()
