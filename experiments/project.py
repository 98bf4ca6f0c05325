"""Paper scale on paper: FLOPs, bytes per device and projected accelerator hours of `:full` configs.

  python -m experiments.project --workdir=/tmp/scale     # every configs/*.py:full and HEADLINE_SETUPS
  python -m experiments.project --config=configs/patches.py:full --out=patches.json --mfu=0.3 --devices=8

Compiles one train step per training phase for this host's CPU (no accelerator needed; a few minutes for
all configs on 2 cores) and writes results.json (`projections`, `readme_tables`) to --workdir or --out;
`python -m experiments.readme WORKDIR` copies the table into README.md ("Paper scale").
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time

FULL_CONFIGS = ("pretrain", "compat", "templates", "patches", "head2toe", "tour", "adapt")
_IMAGENET_224 = {"model.input_norm": "imagenet", "data.image_size": 224, "data.channels": 3}
# The papers' headline setups from published weights (README "Published backbones"), with --config.model.init
# set: the projection needs only the architecture, so the weights file is not read.
HEADLINE_SETUPS = {
    "head2toe, ResNet-50 224 px": ("configs/head2toe.py:full", {
        "model.name": "resnet_imagenet", "model.depth": 50, "model.width": 64, "model.split": "stage4",
        "model.init": "resnet50-19c8e357.pth", **_IMAGENET_224}),
    "head2toe, ViT-B/16 224 px": ("configs/head2toe.py:full", {
        "model.name": "vit", "model.width": 768, "model.depth": 12, "model.heads": 12, "model.mlp_ratio": 4,
        "model.patch": 16, "model.pool": "tok", "model.split": "final", "model.init": "vit_b16.npz",
        **_IMAGENET_224, "model.input_norm": "symmetric"}),
    "patches, MobileNetV2 224 px": ("configs/patches.py:full", {
        "model.name": "mobilenet_v2_imagenet", "model.width": 16, "model.expansion": 6, "model.split": "final",
        "model.init": "mobilenet_v2-b0353104.pth", **_IMAGENET_224}),
}


def load_config(spec: str):
    """'configs/NAME.py[:ARG]' -> the config (one sentence when the file does not exist)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"error: config file {path} does not exist.")
    module_spec = importlib.util.spec_from_file_location(f"_projected_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def with_overrides(config, overrides: dict):
    """`config` with dotted KEY: VALUE overrides (as --config.KEY=VALUE would set them)."""
    for key, value in overrides.items():
        *path, last = key.split(".")
        node = config
        for part in path:
            node = node[part]
        node[last] = value
    return config


def _hours(h: float) -> str:
    return f"{h * 60:.1f} min" if h < 1 else f"{h:.1f} h"


def table(projections: dict, mfu: float, devices: int) -> str:
    from modular import projection, reporting
    rows = []
    for spec, p in projections.items():
        main = max(p["phases"], key=lambda r: r["total_flops"]) if p["phases"] else None
        rows.append({"config": f"`{spec}`" if spec.startswith("configs/") else spec, "phases": len(p["phases"]), "seeds": p["seeds"],
                     "largest phase": f"{main['phase']} ({main['model']}, batch {main['batch']})" if main else "-",
                     "GFLOP/step": f"{main['gflops_per_step']:.2f}" if main else "-",
                     "total PFLOP": f"{p['total_flops'] / 1e15:.2f}",
                     "MiB/device": f"{p['peak_device_bytes'] / 2**20:.0f}",
                     **{a: _hours(p["projected_hours"][a]) for a in projection.ACCELERATORS}})
    return reporting.format_table(rows, title=(
        f"Projected training time at {100 * mfu:.0f}% MFU on {devices} chip(s) (`python -m experiments.project`):"))


def main(argv=None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)   # started: Ctrl-C is a KeyboardInterrupt again
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append",
                        help="configs/NAME.py:full or a HEADLINE_SETUPS name (repeat; default: every :full and "
                             "every headline setup)")
    parser.add_argument("--workdir", help="write WORKDIR/results.json")
    parser.add_argument("--out", help="write this JSON file instead")
    parser.add_argument("--add", action="store_true",
                        help="keep the other projections already in the output file (the table shows all)")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation (default 0.4)")
    parser.add_argument("--devices", type=int, default=1, help="chips the global batch is split over (default 1)")
    args = parser.parse_args(argv)
    from modular import projection, reporting
    specs = {spec: HEADLINE_SETUPS.get(spec, (spec, {})) for spec in args.config} if args.config else {
        **{f"configs/{name}.py:full": (f"configs/{name}.py:full", {}) for name in FULL_CONFIGS}, **HEADLINE_SETUPS}
    out = args.out or (os.path.join(args.workdir, "results.json") if args.workdir else None)
    start, projections, failed = time.time(), {}, {}
    if args.add and out and os.path.isfile(out):  # keep the file's other projections; these are redone
        with open(out) as f:
            projections = {k: v for k, v in json.load(f).get("projections", {}).items() if k not in specs}
    for spec, (path, overrides) in specs.items():
        try:
            config = with_overrides(load_config(path), overrides)
            p = projections[spec] = projection.project(config, mfu=args.mfu, devices=args.devices)
            p["config"], p["overrides"] = path, overrides
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
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        reporting.write_json(out, results)
        print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.exit(main())
