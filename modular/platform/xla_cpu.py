"""XLA:CPU compiler options for the library's jitted functions, and the `jit` that applies them.

Since jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK fusions by default. On every model here the
train step ran faster with convolutions left to XLA's own (Eigen) kernels and only reductions on
YNNPACK (`python -m benchmarks.xla_cpu_options`), so `jit` asks for that. The options apply only once
`enable()` (or `modular.platform.tune_cpu()`) was
called, only when the default backend is the CPU, only when this jaxlib knows them, and never when the
user chose a YNNPACK setting in XLA_FLAGS. `train.fit` and `train.predict` compile through `jit`; the
methods use plain `jax.jit`.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from modular import settings

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
PREFERRED = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}


def enable(on: bool = True) -> None:
    """Ask for PREFERRED in every `jit` built from now on (off by default)."""
    settings.configure(xla_cpu_options=bool(on))


def compiler_options() -> dict:
    """PREFERRED where it is enabled (`modular.settings`), applies and this jaxlib accepts it; {} otherwise."""
    return dict(_options(settings.current().xla_cpu_options, os.environ.get("XLA_FLAGS", "")))


@functools.cache
def _options(enabled: bool, xla_flags: str) -> tuple:
    """(name, value) pairs; cached per setting and XLA_FLAGS (the probe compiles a program)."""
    if not enabled or jax.default_backend() != "cpu" or YNN_FUSION_TYPE in xla_flags:
        return ()
    if "compiler_options" not in inspect.signature(jax.jit).parameters:
        return ()
    try:
        jax.jit(lambda x: x.sum()).lower(jax.ShapeDtypeStruct((2,), jnp.float32)).compile(dict(PREFERRED))
    except Exception:  # an older or newer jaxlib without this option: keep XLA's defaults
        return ()
    return tuple(PREFERRED.items())


compiler_options.cache_clear = _options.cache_clear   # probe again (tests that change what jaxlib accepts)


def jit(fn: Callable, **kwargs: Any):
    """jax.jit(fn, **kwargs) with `compiler_options()` added."""
    options = compiler_options()
    if options:
        kwargs["compiler_options"] = {**options, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)
