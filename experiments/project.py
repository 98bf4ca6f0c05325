"""Paper scale on paper: FLOPs, bytes per device and projected accelerator hours of `:full` configs.

  python -m experiments.project --workdir=/tmp/scale                     # every configs/*.py:full
  python -m experiments.project --config=configs/patches.py:full --out=patches.json --mfu=0.3 --devices=8

Compiles one train step per training phase for this host's CPU (no accelerator needed; a few minutes for
all configs on 2 cores) and writes results.json (`projections`, `readme_tables`) to --workdir or --out;
`python -m experiments.readme WORKDIR` copies the table into README.md ("Paper scale").
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

FULL_CONFIGS = ("pretrain", "compat", "templates", "patches", "head2toe", "tour", "adapt")


def load_config(spec: str):
    """'configs/NAME.py[:ARG]' -> the config (one sentence when the file does not exist)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"error: config file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"_projected_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def table(projections: dict, mfu: float, devices: int) -> str:
    from modular import projection, reporting
    rows = []
    for spec, p in projections.items():
        main = max(p["phases"], key=lambda r: r["total_flops"]) if p["phases"] else None
        rows.append({"config": f"`{spec}`", "phases": len(p["phases"]), "seeds": p["seeds"],
                     "largest phase": f"{main['phase']} ({main['model']}, batch {main['batch']})" if main else "-",
                     "GFLOP/step": f"{main['gflops_per_step']:.2f}" if main else "-",
                     "total PFLOP": f"{p['total_flops'] / 1e15:.2f}",
                     "MiB/device": f"{p['peak_device_bytes'] / 2**20:.0f}",
                     **{a: _hours(p["projected_hours"][a]) for a in projection.ACCELERATORS}})
    return reporting.format_table(rows, title=(
        f"Projected training time at {100 * mfu:.0f}% MFU on {devices} chip(s) (`python -m experiments.project`):"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="configs/NAME.py:full (repeat; default: every :full)")
    parser.add_argument("--workdir", help="write WORKDIR/results.json")
    parser.add_argument("--out", help="write this JSON file instead")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    parser.add_argument("--devices", type=int, default=1, help="chips the global batch is split over (default 1)")
    args = parser.parse_args(argv)
    from modular import projection, reporting
    specs = args.config or [f"configs/{name}.py:full" for name in FULL_CONFIGS]
    start, projections, failed = time.time(), {}, {}
    for spec in specs:
        try:
            p = projections[spec] = projection.project(load_config(spec), mfu=args.mfu, devices=args.devices)
        except ValueError as e:  # one config that cannot be projected does not stop the others
            failed[spec] = str(e)
            print(f"error: {spec}: {e}", file=sys.stderr, flush=True)
            continue
        print(reporting.format_table(
            [{"phase": r["phase"], "model": r["model"], "batch": r["batch"], "steps x repeats":
              f"{r['steps']} x {r['repeats']}", "GFLOP/step": f"{r['gflops_per_step']:.2f}",
              "MiB/device": f"{r['device_bytes']['total'] / 2**20:.0f}"} for r in p["phases"]],
            title=f"{spec}: {p['total_flops'] / 1e15:.3f} PFLOP over {p['seeds']} seed(s); "
                  f"not counted: {p['uncounted']}"), flush=True)
    text = table(projections, args.mfu, args.devices)
    print(text, flush=True)
    results = dict(projections=projections, failed=failed, mfu=args.mfu, devices=args.devices,
                   accelerators_peak_flops=projection.ACCELERATORS, wall_seconds=time.time() - start,
                   readme_tables={"scale": text})
    out = args.out or (os.path.join(args.workdir, "results.json") if args.workdir else None)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        reporting.write_json(out, results)
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
