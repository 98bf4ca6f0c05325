"""The library's process-wide switches in one explicit object, read where they apply.

Four settings change what the library traces or how a loop stops, without being arguments of every model or
step: they are fields of `Settings`, read through `current()`. `configure(**changes)` sets the process default
(what `modular.platform.tune_cpu()` and `experiments.run` do); `scoped(**changes)` changes them inside a block
only, for this thread (A/B benchmarks and tests). Tracing reads them, so jit afresh after a change.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
    divergence_factor: float = 100.0   # train.fit stops when the loss exceeds this multiple of its first value
    fusion_boundaries: bool = False    # platform.fusion: opaque boundaries on CPU residual streams
    shifted_depthwise: bool = False    # platform.depthwise: the CPU depthwise kernel
    xla_cpu_options: bool = False      # platform.xla_cpu: compiler options for train.fit / train.predict


_default = Settings()            # the process default; only configure() replaces it
_SCOPED: contextvars.ContextVar[Settings | None] = contextvars.ContextVar("modular_settings", default=None)


def current() -> Settings:
    """The settings in force here: the innermost `scoped` block's, else the process default."""
    return _SCOPED.get() or _default


def _changed(base: Settings, changes: dict) -> Settings:
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise ValueError(f"Unknown setting(s) {', '.join(unknown)}; known: "
                         f"{', '.join(f.name for f in dataclasses.fields(Settings))}.")
    return dataclasses.replace(base, **changes)


def configure(**changes) -> Settings:
    """Change the process default (every thread, from now on); returns the new settings."""
    global _default
    _default = _changed(_default, changes)
    return _default


@contextlib.contextmanager
def scoped(**changes):
    """The settings with `changes` inside the block only (this thread / context)."""
    token = _SCOPED.set(_changed(current(), changes))
    try:
        yield current()
    finally:
        _SCOPED.reset(token)
