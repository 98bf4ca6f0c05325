"""XLA:CPU compiler options for the library's jitted functions, and the `jit` that applies them.

Since jaxlib 0.10, XLA:CPU hands convolutions to YNNPACK fusions by default. On every model here the
train step ran faster with convolutions left to XLA's own (Eigen) kernels and only reductions on
YNNPACK (`python -m benchmarks.xla_cpu_options`, issue 8), so `jit` asks for that. The options apply only when the default backend is the CPU, only
when this jaxlib knows them, and never when the user chose a YNNPACK setting in XLA_FLAGS.
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


@functools.cache
def compiler_options() -> dict:
    """PREFERRED where it applies and this jaxlib accepts it; {} otherwise."""
    if jax.default_backend() != "cpu" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
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
