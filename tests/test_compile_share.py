"""benchmarks.compile_share measures compiling, and a second run with the persistent cache reuses programs."""
import json
import logging
import subprocess
import sys

import pytest

from benchmarks import compile_share
from cli_helpers import ROOT, env

def measure(tmp_path, name, cache):
    out = tmp_path / f"{name}.json"
    e = env()
    e.pop("JAX_COMPILATION_CACHE_DIR", None)   # the suite's shared cache would make the cold run warm
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compile_share", "--config=configs/pretrain.py:smoke",
                           "--config.num_steps=4", "--config.log_every=2", f"--workdir={tmp_path / name}",
                           f"--cache={cache}", f"--out={out}"], cwd=ROOT, env=e, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compile share of wall" in proc.stdout
    return json.loads(out.read_text())


@pytest.mark.e2e
def test_cold_then_warm_run(tmp_path):
    cache = tmp_path / "cache"
    cold = measure(tmp_path, "cold", cache)
    assert cold["compilations"] > 0 and 0 < cold["compile_seconds"] < cold["wall_seconds"]
    assert cold["distinct_programs"] > 0   # (a program compiled twice in one run is a hit even when cold)
    assert cold["cache_empty_at_start"] and cold["identical_compiled_twice"] == cold["persistent_cache_hits"]
    assert sum(n for _, n in cold["identical_by_name"]) == cold["identical_compiled_twice"]   # each hit named
    assert sum(n for _, _, n in cold["identical_by_site"]) == cold["identical_compiled_twice"]   # and placed
    warm = measure(tmp_path, "warm", cache)
    assert not warm["cache_empty_at_start"] and warm["identical_compiled_twice"] is None
    assert warm["persistent_cache_hits"] > cold["persistent_cache_hits"]
    assert warm["compile_seconds"] < cold["compile_seconds"]


@pytest.mark.unit
def test_a_repeat_is_listed_where_the_code_asked_for_it():
    """A program compiled again names the project's frames that asked for it, innermost first."""
    log = compile_share.CompileLog()

    def evaluate_twice():
        log.emit(logging.makeLogRecord(dict(msg="Persistent compilation cache hit for 'jit_logits' with key x")))
    evaluate_twice()
    [((name, site), n)] = log.hits_by_site.items()
    assert (name, n) == ("jit_logits", 1)
    innermost, caller = site.split(" < ")
    assert innermost.startswith("tests/test_compile_share.py:") and innermost.endswith(" evaluate_twice")
    assert caller.endswith(" test_a_repeat_is_listed_where_the_code_asked_for_it")
