"""Keep freed host memory for reuse, so XLA:CPU does not page-fault its temporaries back in every step.

XLA:CPU allocates a compiled program's temporaries as one block per execution (336 MB for a ResNet-20
train step at batch 128) and frees it afterwards. glibc serves blocks that large with a fresh mmap and
unmaps them on free, so every step faults the whole block back in, page by page: 84k page faults and
~190 ms of kernel time per ResNet-20 step on 2 cores, a fifth of the CPU time. Two settings fix
it: glibc serves large blocks from its heap and keeps what is freed there (`mallopt`), and JAX runs CPU
programs on the calling thread (`jax_cpu_enable_async_dispatch=False`), whose allocations come from that
heap (worker threads get glibc arenas that still map large blocks afresh).

Both are process-wide, so library users opt in; `experiments.run` and the benchmarks call it first thing
(through `modular.platform.tune_cpu()`), and `MODULAR_HOST_MEMORY=default` turns it off there (for A/B runs).
The price: freed memory stays with the process (its resident size keeps its peak), and Python no longer
runs ahead of single-device CPU computations. Programs sharded over several CPU devices still run on
worker threads and gain nothing (measured: same speed).
"""
from __future__ import annotations

import ctypes
import os
import platform
from typing import Callable, Optional

from absl import logging

OPT_OUT_ENV = "MODULAR_HOST_MEMORY"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_BYTES = 2**31 - 1  # free heap above this much is given back to the kernel; less stays for reuse


def _glibc_mallopt() -> Optional[Callable[[int, int], int]]:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt


def _cpu_backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: assume the worst, the setting may be late
        return True


def reuse_freed_memory() -> list[str]:
    """Apply both settings where this process allows; returns what was applied, in words.

    Call it before anything starts JAX's backend (jax.devices(), the first computation). Later, the
    allocator setting still applies but the dispatch mode is fixed, and a warning says so.
    """
    if os.environ.get(OPT_OUT_ENV, "").lower() == "default":
        return []
    applied = []
    mallopt = _glibc_mallopt()
    if mallopt is not None and mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES) == 1:
        applied.append("glibc keeps freed memory for reuse")
    import jax
    if _cpu_backend_started():
        logging.warning("JAX's backend already started: CPU programs keep asynchronous dispatch, so their "
                        "temporaries may still be mapped afresh in every step (call reuse_freed_memory() first).")
    else:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        applied.append("CPU programs run on the calling thread")
    return applied
