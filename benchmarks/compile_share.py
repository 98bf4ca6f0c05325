"""How much of an experiment's wall time is compiling, and which programs compile more than once.

  python -m benchmarks.compile_share --config=configs/NAME.py[:ARG] [--config.KEY=VALUE ...]
      [--workdir=DIR] [--cache=fresh|off|DIR] [--out=FILE.json]

Runs the experiment in this process, as `experiments.run` does, and reads JAX's own monitoring events and
compile log: XLA compilations (each `jit` cache miss that reaches the backend), their seconds, the seconds of
tracing and lowering, and persistent-cache hits. `--cache=fresh` (the default) measures a cold run with
the persistent cache on, as `experiments.run` has it, in a new empty folder: every hit there is a program
identical (same HLO, same options) to one compiled earlier in the same run, i.e. compiled twice.
`--cache=off` runs without the persistent cache; run twice with `--cache=DIR` to measure a second run that
reuses the first one's programs. The compile log names each program and its argument shapes only, so the
(name, argument shapes) pairs seen more than once are listed too, as candidates: an eager op such as
`broadcast_in_dim` or `_normal` has one argument shape for every output shape it makes. Each identical
program compiled again is listed with where the project's code asked for it (the innermost two of its own
frames, cache plumbing skipped), which is where to look for the second key. The workdir defaults to a fresh
temporary folder, so nothing resumes.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import tempfile
import time
import traceback

from absl import app, flags
from absl import logging as absl_logging

from experiments import run as run_cli


BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
CACHE_HIT = "/jax/compilation_cache/cache_hits"
_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")
_LOWERED = re.compile(r"Compiling (\S+) with global shapes and types (.*?)\. Argument mapping", re.S)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PLUMBING = ("modular/compiled.py", "modular/platform/", "benchmarks/")


def call_site(depth: int = 2) -> str:
    """The innermost `depth` frames of this project's code on the current stack (not the program caches),
    as 'path:line function < ...', innermost first."""
    frames = []
    for frame in reversed(traceback.extract_stack()):
        path = os.path.relpath(frame.filename, _ROOT)
        if path.startswith("..") or path.startswith(_PLUMBING):
            continue
        frames.append(f"{path}:{frame.lineno} {frame.name}")
        if len(frames) == depth:
            break
    return " < ".join(frames) or "?"


class CompileLog(logging.Handler):
    """Collects JAX's compile log (jax_log_compiles) and monitoring events, and keeps them off the console."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.lowered = collections.Counter()
        self.seconds = collections.defaultdict(float)
        self.counts = collections.Counter()
        self.compiled_by_name = collections.Counter()
        self.hits_by_name = collections.Counter()
        self.hits_by_site = collections.Counter()

    def emit(self, record):
        message = record.getMessage()
        m = _LOWERED.search(message)
        if m:
            self.lowered[(m.group(1), m.group(2))] += 1
        hit = _HIT.search(message)
        if hit:
            self.hits_by_name[hit.group(1)] += 1
            self.hits_by_site[(hit.group(1), call_site())] += 1

    def on_duration(self, event, duration, **kwargs):
        self.seconds[event] += duration
        self.counts[event] += 1
        if event == BACKEND_COMPILE:
            self.compiled_by_name[kwargs.get("fun_name", "?")] += 1

    def on_event(self, event, **kwargs):
        self.counts[event] += 1

    def repeated(self) -> list[tuple[str, int]]:
        """(name, argument shapes) pairs lowered more than once: (name, extra times), most first. Candidates
        only: static arguments (an eager op's output shape, a jit's static_argnums) are not in the log."""
        by_name = collections.Counter()
        for (name, _), n in self.lowered.items():
            if n > 1:
                by_name[name] += n - 1
        return by_name.most_common()


def measure(config, workdir: str, cache: str) -> dict:
    import jax
    from jax import monitoring
    from modular import compilation_cache, platform

    platform.tune_cpu()
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax's INFO lines, as experiments.run
    if cache == "fresh":
        cache = tempfile.mkdtemp(prefix="compile_share_cache_")
    empty_at_start = cache != "off" and not (os.path.isdir(cache) and os.listdir(cache))
    if cache != "off":
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        os.environ[compilation_cache.ENV] = cache
        compilation_cache.enable(cache)
    log = CompileLog()
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(log)
    jax_logger.propagate = False
    jax.config.update("jax_log_compiles", True)
    monitoring.register_event_duration_secs_listener(log.on_duration)
    monitoring.register_event_listener(log.on_event)
    start = time.time()
    run_cli.run(config, workdir)
    wall = time.time() - start
    compile_s = log.seconds[BACKEND_COMPILE]
    trace_lower_s = log.seconds[TRACE] + log.seconds[LOWER]
    return dict(config=config.experiment, scale=config.get("scale", ""), wall_seconds=wall,
                compilations=log.counts[BACKEND_COMPILE], compile_seconds=compile_s,
                trace_lower_seconds=trace_lower_s, compile_share=(compile_s + trace_lower_s) / max(wall, 1e-9),
                persistent_cache_hits=log.counts[CACHE_HIT], distinct_programs=len(log.lowered),
                cache=cache, cache_empty_at_start=empty_at_start,
                identical_compiled_twice=log.counts[CACHE_HIT] if empty_at_start else None,
                identical_by_name=log.hits_by_name.most_common() if empty_at_start else None,
                identical_by_site=([[name, site, n] for (name, site), n in log.hits_by_site.most_common()]
                                   if empty_at_start else None),
                compiled_again=log.repeated(), most_compiled=log.compiled_by_name.most_common(10))


def report(m: dict) -> str:
    again = ", ".join(f"{name} x{n + 1}" for name, n in m["compiled_again"][:8]) or "none"
    return "\n".join([
        f"experiment {m['config']} ({m['scale']}): {m['wall_seconds']:.1f} s wall",
        f"  XLA compilations      {m['compilations']} ({m['persistent_cache_hits']} from the persistent cache)",
        f"  compile seconds       {m['compile_seconds']:.1f}  (+ {m['trace_lower_seconds']:.1f} s tracing and lowering)",
        f"  compile share of wall {100 * m['compile_share']:.0f}%",
        f"  distinct programs     {m['distinct_programs']} (program x argument shapes)",
        "  identical programs compiled again in this run: "
        + (f"{m['identical_compiled_twice']} (hits on a cache that started empty): "
           + (", ".join(f"{name} x{n}" for name, n in m["identical_by_name"][:10]) or "none")
           if m["identical_compiled_twice"] is not None else "unknown (needs --cache=fresh or an empty folder)"),
        *(f"    {name} x{n}: {site}" for name, site, n in (m["identical_by_site"] or [])[:20]),
        f"  same name and argument shapes more than once (candidates; static arguments are not logged): {again}",
    ])


def main(argv) -> None:
    if len(argv) > 1:
        run_cli._exit_with(f"unexpected arguments: {' '.join(argv[1:])}.", 1)
    workdir = run_cli._WORKDIR.value or tempfile.mkdtemp(prefix="compile_share_")
    m = measure(run_cli._CONFIG.value, workdir, _CACHE.value)
    print(report(m), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(m, f, indent=1)


if __name__ == "__main__":
    # Defined here, not on import, so that the measuring pieces import beside other benchmarks' flags (--out).
    _CACHE = flags.DEFINE_string("cache", "fresh", "'fresh' (a cold run on a new, empty persistent cache: its hits "
                                 "are programs compiled twice), 'off', or a folder for JAX's persistent cache.")
    _OUT = flags.DEFINE_string("out", "", "Also write the measurements as JSON to this file.")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    flags.FLAGS.set_default("workdir", "")
    flags.FLAGS["workdir"].required = False
    app.run(main, flags_parser=run_cli._parse_flags)
