"""A persistent XLA compilation cache scoped to one run, so a program that recurs compiles once.

`train.fit` builds a fresh jitted step on every call, which jax's in-memory cache cannot recognise as
the same program; adapting one method to several targets of one shape therefore compiles identical
code again and again. jax's persistent cache keys on the program text instead, turning every repeat
(and every compile of a resumed run) into a file read. Settings are restored on exit, and a cache
the user already configured is left alone.
"""
from __future__ import annotations

import contextlib
import os

import jax
from jax.experimental.compilation_cache import compilation_cache as cc


@contextlib.contextmanager
def persistent(path: str | None, min_compile_seconds: float = 0.1):
    """Cache compiled programs under `path` (None or '': do nothing) for the duration of the block."""
    if not path or jax.config.jax_compilation_cache_dir:
        yield
        return
    previous = jax.config.jax_persistent_cache_min_compile_time_secs
    os.makedirs(path, exist_ok=True)
    cc.set_cache_dir(os.path.abspath(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    cc.reset_cache()  # the cache is set up once per process; let it pick up the new directory
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)
        cc.reset_cache()
