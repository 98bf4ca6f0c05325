"""Launch any experiment from an ml_collections config:

  python -m experiments.run --config=configs/NAME.py[:ARG] --workdir=DIR [--config.KEY=VALUE ...]

Writes DIR/config.json, DIR/results.json, TensorBoard events and orbax checkpoints under DIR; a second
run on the same DIR resumes from the last checkpoint. Bad input ends with one sentence, exit code 1.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

EXPERIMENTS = ("pretrain", "compat", "templates", "patches", "head2toe", "tour")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/NAME.py[:ARG] file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and TensorBoard events.")
flags.mark_flags_as_required(["config", "workdir"])


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (reported as one sentence), as opposed to bugs (full traceback)."""
    from modular import checkpoint, params, train
    return (ValueError, KeyError, FileNotFoundError, checkpoint.CheckpointError, params.SubtreeMismatchError,
            train.NonFiniteLossError)


def run(config, workdir: str) -> dict:
    """Run `config.experiment` in `workdir` and write config.json and results.json there."""
    import jax
    from modular import parallel, reporting

    parallel.maybe_initialize_distributed()
    name = config.get("experiment", None)
    if name not in EXPERIMENTS:
        raise ValueError(f"Unknown experiment {name!r} in config.experiment; known: {', '.join(EXPERIMENTS)}.")
    module = importlib.import_module(f"experiments.{name}")
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if is_main:
        reporting.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    start = time.time()
    results = dict(module.run(config, workdir))
    results.setdefault("wall_seconds", time.time() - start)
    results.setdefault("devices", f"{jax.device_count()} x {jax.devices()[0].platform} in {jax.process_count()} process(es)")
    if is_main:
        reporting.write_json(os.path.join(workdir, "results.json"), results)
        print(f"wrote {os.path.join(workdir, 'results.json')}", flush=True)
    return results


def main(argv) -> None:
    from modular import platform
    platform.tune_cpu()  # before anything starts JAX; MODULAR_CPU_TUNING=off turns it off
    logging.set_verbosity(logging.WARNING)  # orbax/clu INFO logs drown the progress lines we print
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except user_errors() as e:
        if os.environ.get("MODULAR_DEBUG"):
            traceback.print_exc()
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
