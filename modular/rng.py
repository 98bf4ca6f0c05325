"""Named random streams: every consumer of randomness derives its seed from (run seed, stream names).

`key(seed, "init", "head")` and `seed(seed, "batches", "task_a")` replace ad-hoc offsets such as
`seed + 7`: two streams never collide by accident, a new stream never shifts an old one, and the name
says what the randomness is for. Names are folded in by their CRC32, so streams are stable across
processes and Python versions (no `hash()` randomisation).
"""
from __future__ import annotations

import zlib

import jax
import numpy as np


def _tag(name: str | int) -> int:
    return int(name) if isinstance(name, (int, np.integer)) else zlib.crc32(str(name).encode())


def key(seed: int, *names: str | int) -> jax.Array:
    """A JAX key for stream `names` of run `seed` (each name folded in with `jax.random.fold_in`)."""
    k = jax.random.key(int(seed))
    for name in names:
        k = jax.random.fold_in(k, _tag(name))
    return k


def seed(seed: int, *names: str | int) -> int:
    """A non-negative integer seed (for numpy and `data.batch_at`) for stream `names` of run `seed`."""
    if not names:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), *map(_tag, names)]).generate_state(1)[0])
