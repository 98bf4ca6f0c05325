"""Compiled programs kept for reuse, keyed on what changes the program.

A method that trains many times (a grid, seeds, tasks of one shape) must compile its step once per program
and shape: `jax.jit` reuses its executable only for the same function object, so the jitted step is built
once per key and kept here. A key names what the program depends on: the loss function (loss factories are
memoised, so equal arguments give one object), the optimizer's program (`optim.program_key`: the learning
rate and step count are runtime state, not part of it), and the trees' structure and shapes
(`tree_signature`). Bounded, least recently used first out, so a long sweep does not hold every program.
"""
from __future__ import annotations

import collections
import json
from typing import Any, Callable, Hashable, TypeVar

import jax
import ml_collections
import numpy as np

T = TypeVar("T")


def tree_signature(tree: Any) -> tuple:
    """The structure and every leaf's shape and dtype: what a jitted function's executable depends on."""
    leaves = tuple((np.shape(x), str(np.result_type(x))) for x in jax.tree.leaves(tree))
    return jax.tree.structure(tree), leaves


def config_key(cfg: ml_collections.ConfigDict) -> str:
    """A config's values as one hashable string (sorted keys)."""
    return json.dumps(cfg.to_dict(), sort_keys=True, default=str)


class ProgramCache:
    """`get(key, build)`: the value `build()` made for `key`, built on first use; at most `maxsize` kept."""

    def __init__(self, maxsize: int = 32):
        self.maxsize = int(maxsize)
        self._entries: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = self._entries[key] = build()
        while len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def clear(self) -> None:
        self._entries.clear()
