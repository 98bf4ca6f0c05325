"""Test defaults: quiet TensorFlow, CPU only, one host device unless a test asks for more. The library's
default settings: the CPU tuning of `modular.platform` is tested on its own, in tests/platform.

The suite compiles many identical programs in different tests and in the CLI tests' subprocesses (the same
smoke run killed and resumed, on 1 and 8 devices, in 1 and 2 processes). One session-wide JAX persistent
compilation cache, shared by pytest-xdist's workers and every subprocess through the environment, compiles each
once; the cache is keyed on the whole program and its compile options, so it changes no result. A user's own
JAX_COMPILATION_CACHE_DIR is left alone."""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
