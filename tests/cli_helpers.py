"""Helpers shared by the CLI tests: run `experiments.run` in a subprocess with the test environment.

A module of its own (not imported from a test file) so that plain `pytest`, which does not put the repository
root on sys.path, imports it: tests/ is on sys.path through pytest.ini's `pythonpath`."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def env(**extra):
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    e.pop("XLA_FLAGS", None)
    e.update(extra)
    return e


def cli(workdir, *overrides, config="configs/pretrain.py:smoke", **extra_env):
    return [sys.executable, "-m", "experiments.run", f"--config={config}", f"--workdir={workdir}", *overrides]


def run_cli(workdir, *overrides, config="configs/pretrain.py:smoke", timeout=600, **extra_env):
    proc = subprocess.run(cli(workdir, *overrides, config=config), cwd=ROOT, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)
    return proc


def results(workdir):
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)
