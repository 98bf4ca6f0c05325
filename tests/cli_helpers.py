"""Helpers shared by the CLI tests: run `experiments.run` in a subprocess with the test environment.

A module of its own (not imported from a test file) so that plain `pytest`, which does not put the repository
root on sys.path, imports it: tests/ is on sys.path through pytest.ini's `pythonpath`."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The suite's XLA flags (conftest.py says why): LLVM's optimisations and the MLIR fusion emitters off, and
# each program's machine code generated in one piece instead of split across threads, for compile time.
TEST_XLA_FLAGS = "" if os.environ.get("MODULAR_TEST_XLA_DEFAULTS") == "1" else (
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    "--xla_cpu_parallel_codegen_split_count=1")


def env(**extra):
    """The subprocess environment: the test process's, with the suite's XLA flags (plus `extra`'s XLA_FLAGS,
    e.g. a host device count) instead of whatever XLA_FLAGS this process holds."""
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    e.pop("XLA_FLAGS", None)
    flags = f"{extra.pop('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
    e.update(extra)
    if flags:
        e["XLA_FLAGS"] = flags
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


# A 4-step run of the default config (pretrain smoke), logging and saving every 2 steps.
SHORT = ["--config.num_steps=4", "--config.log_every=2", "--config.checkpoint_every=2"]


def one_sentence(proc, *needles, code=1):
    """A run that failed with exit `code` and said why in one line of stderr holding every needle: that line."""
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]
