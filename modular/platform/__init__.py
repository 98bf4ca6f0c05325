"""Platform-specific speed settings, in one place and off by default.

The library's programs are XLA's defaults on every platform. `tune_cpu()` switches on what was measured
to speed up training on CPU hosts (`python -m benchmarks.host_memory`, `benchmarks.xla_cpu_options`):

- `host_memory`: glibc keeps freed memory and JAX runs CPU programs on the calling thread, so XLA:CPU's
  per-step temporaries are reused instead of page-faulted in (process-wide; call before JAX starts);
- `xla_cpu`: compiler options for `train.fit`/`train.predict` that leave convolutions to XLA's Eigen kernels;
- `fusion`: boundaries on residual streams and BN activations that XLA:CPU's fusion cannot cross;
- `depthwise`: depthwise convolutions as shifted multiply-adds with a cache-blocked kernel gradient
  (XLA:CPU's grouped convolution is a slow generic loop).

None of them changes what a GPU or TPU compiles: the compiler options apply only on the CPU backend, and
the fusion boundary and the depthwise kernel lower to the plain identity and XLA's grouped convolution
off CPU (`jax.lax.platform_dependent`).
`experiments.run` and the benchmarks call `tune_cpu()`; `MODULAR_CPU_TUNING=off` turns it off there.
"""
from __future__ import annotations

import os

from modular.platform import depthwise, fusion, host_memory, xla_cpu

OPT_OUT_ENV = "MODULAR_CPU_TUNING"


def tune_cpu() -> list[str]:
    """Apply the CPU settings (unless MODULAR_CPU_TUNING=off); returns what was applied, in words."""
    if os.environ.get(OPT_OUT_ENV, "").lower() in ("off", "0", "false", "default"):
        return []
    applied = host_memory.reuse_freed_memory()
    xla_cpu.enable()
    fusion.enable()
    depthwise.enable()
    return applied + ["XLA:CPU convolutions on Eigen kernels (train.fit/predict)", "fusion boundaries",
                      "shifted depthwise convolutions"]


__all__ = ["tune_cpu", "depthwise", "fusion", "host_memory", "xla_cpu"]
