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

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
PREFERRED = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}
_ENABLED = [False]


def enable(on: bool = True) -> None:
    """Ask for PREFERRED in every `jit` built from now on (off by default)."""
    _ENABLED[0] = bool(on)
    compiler_options.cache_clear()


@functools.cache
def compiler_options() -> dict:
    """PREFERRED where it is enabled, applies and this jaxlib accepts it; {} otherwise."""
    if not _ENABLED[0] or jax.default_backend() != "cpu" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
        return {}
    if "compiler_options" not in inspect.signature(jax.jit).parameters:
        return {}
    try:
        jax.jit(lambda x: x.sum()).lower(jnp.zeros(2)).compile(dict(PREFERRED))
    except Exception:  # an older or newer jaxlib without this option: keep XLA's defaults
        return {}
    return dict(PREFERRED)


def jit(fn: Callable, **kwargs: Any):
    """jax.jit(fn, **kwargs) with `compiler_options()` added."""
    options = compiler_options()
    if options:
        kwargs["compiler_options"] = {**options, **kwargs.get("compiler_options", {})}
    return jax.jit(fn, **kwargs)
