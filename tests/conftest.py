"""Test defaults: quiet TensorFlow, CPU only, one host device unless a test asks for more. The library's
default settings: the CPU tuning of `modular.platform` is tested on its own, in tests/platform.

The suite compiles many identical programs in different tests and in the CLI tests' subprocesses (the same
smoke run killed and resumed, on 1 and 8 devices, in 1 and 2 processes). One session-wide JAX persistent
compilation cache, shared by pytest-xdist's workers and every subprocess through the environment, compiles each
once; the cache is keyed on the whole program and its compile options, so it changes no result. A user's own
JAX_COMPILATION_CACHE_DIR is left alone.

Compiling is most of the suite's time (its programs run a few steps each), so the tests compile for the CPU
with LLVM's optimisations off and XLA:CPU's older loop emitters instead of its MLIR fusion emitters
(`TEST_XLA_FLAGS`): the same HLO programs, their machine code generated with less effort. Measured on 2 cores
(2026-12-07): the tour's smoke test took 160 s of CPU time with XLA's defaults, 62 s without LLVM optimisation;
the patches rate-choice test 205 s without LLVM optimisation, 128 s with the older emitters too (its XLA compile
time 97 s -> 56 s; a MobileNetV2 step compiles in 3.4 s instead of 9.1 s and runs in 15 ms instead of 13 ms).
The older emitters compile slower than the fusion emitters at XLA's default optimisation level, so they are no
help to users' runs, which keep XLA's defaults; `MODULAR_TEST_XLA_DEFAULTS=1` runs the suite with them.
XLA:CPU also splits each program's LLVM module to generate code on several threads; with two test workers on
two cores there is no idle core to gain, and generating it in one piece took 10% less CPU (the patches
rate-choice test's calls: 121 instead of 133 s, 2026-12-07), with bit-identical results."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from cli_helpers import TEST_XLA_FLAGS  # noqa: E402  (tests/ is on sys.path: pytest.ini's pythonpath)

if TEST_XLA_FLAGS and TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:   # set once, by the process that starts the session
    _cache = tempfile.mkdtemp(prefix="modular_test_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pytest.ini): one worker per core, at most 4. Most tests are single-threaded XLA compiles, so
    two workers on CI's two cores nearly halve the wall time; more than 4 buys little (the largest files set
    the tail) and costs a TensorFlow+JAX import and ~2 GB each. pytest.ini's --dist loadscope keeps each file's
    (or class's) tests on one worker, so module fixtures (trained backbones, reference runs) are built once."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


# Tiers (pytest.ini's markers). `pytest -q` runs them all; `-m unit` is the minute-long loop while working.
# A test's own `unit`/`e2e`/`full` marker wins; otherwise its file decides: the paper-sized `:full` configs are
# `full`, the files below run experiments end to end (subprocesses, trained backbones, whole studies) and are
# `e2e`, and everything else is `unit`.
TIERS = ("unit", "e2e", "full")
FULL_FILES = {"test_full_configs.py"}
E2E_FILES = {"test_cli.py", "test_workdir.py", "test_workdir_resume.py", "test_tour.py", "test_adapt.py",
             "test_docs.py", "test_interrupts.py", "test_compat_study.py", "test_lowering.py", "test_convert.py",
             "test_streaming.py", "test_head2toe_protocol.py", "test_templates_adaptation.py",
             "test_templates_selforg.py", "test_patches.py", "test_patches_multitask.py", "test_patches_rate_choice.py",
             "test_patches_smoke.py", "test_templates.py", "test_templates_smoke.py", "test_compat.py",
             "test_head2toe.py", "test_projection.py", "test_dtype.py"}


# The files that take longest, longest first (CPU seconds on 2 cores, 2026-12-07: compat study 157, patches smoke
# 141, ... benchmark accelerator 23; every other file under 16). pytest-xdist gives a worker the next file each time
# it finishes one (pytest.ini: --dist loadscope, and --no-loadscope-reorder, which would otherwise put the files with
# the most tests first), so starting with the longest lets the two workers finish together: in the default order the
# long single-test files came last and one worker ran them alone for the last 157 s of the suite's 14 min 26 s.
LONGEST_FIRST = ("test_compat_study.py", "test_patches_smoke.py", "test_cli.py", "test_patches_rate_choice.py",
                 "test_workdir.py", "test_templates_smoke.py", "test_workdir_resume.py", "test_head2toe.py",
                 "test_templates.py", "test_lowering.py", "test_host_memory.py", "test_patches.py", "test_docs.py",
                 "test_adapt.py", "test_tour.py", "test_patches_multitask.py", "test_compat.py", "test_models.py",
                 "test_streaming.py", "test_compile_share.py", "test_benchmark_accelerator.py")


def pytest_collection_modifyitems(config, items):
    import pytest
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))   # stable: file order kept
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIERS):
            continue
        name = os.path.basename(str(item.fspath))
        tier = "full" if name in FULL_FILES else "e2e" if name in E2E_FILES else "unit"
        item.add_marker(getattr(pytest.mark, tier))
