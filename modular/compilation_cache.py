"""JAX's persistent compilation cache, on by default for runs: compile a program once, not once per run.

A rerun, a resume, the next seed in a new workdir or a run after editing one method reuses every compiled
program that did not change; the cache is keyed on the whole program, its compile options and the backend,
so it changes no result. Where the cache lives, first match wins:

1. the user's own `JAX_COMPILATION_CACHE_DIR` (JAX reads it itself; left alone);
2. `MODULAR_COMPILATION_CACHE`: a folder, or `off`;
3. the run's `config.compilation_cache`: a folder, `off`, or '' for the default;
4. the default, a per-user folder: `$XDG_CACHE_HOME/modular/jax` (`~/.cache/modular/jax`).
"""
from __future__ import annotations

import os

ENV = "MODULAR_COMPILATION_CACHE"
OFF = ("off", "0", "false", "none")
MAX_BYTES = 4 << 30   # least recently used programs are evicted past this size


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modular", "jax")


def chosen_dir(setting: str | None = "") -> str | None:
    """The folder the rules above choose, or None when the cache is off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    value = os.environ.get(ENV, setting or "")
    if str(value).strip().lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(value)) if value else default_dir()


def enable(setting: str | None = "") -> str | None:
    """Turn the cache on where `chosen_dir(setting)` says (before the first compilation); returns the folder."""
    import jax
    directory = chosen_dir(setting)
    if directory is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return directory
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    # Every program, also the many small ones that compile in under a second: together they are minutes.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    except AttributeError:   # a jax without size-bounded caches
        pass
    return directory
