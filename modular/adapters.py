"""One adapt signature for every method, found by name: the core imports no paper.

An adapter adds one task to a bank:

  adapt(backbone, dataset, config, *, seed, workdir, bank_path, meta) -> bank.Adapted

It trains the method's task-private subtree for `dataset` (a `data.Dataset`) on the frozen `backbone` (a
`backbone.Backbone`: the classifier, its model config and input spec), reading its settings from the
experiment's `config` (each adapter says which keys it reads), keeps its runs under `workdir`, writes the
subtree to `bank_path` tagged with `meta`, and returns the bank record. The record's `server` names the
module that serves the file (`bank.load_served`) and its `entry` what the method adds to the file's manifest
entry (e.g. the patch mode and the hyper-parameters it chose). An adapter may also have `phases(config)`:
the training phases it runs, for the projection (`modular.projection.phases`).

The registry maps a method name to its adapter as `"package.module:attribute"`; the module is imported only
when the method is used (as `bank.load_served` imports a manifest entry's `server`). Methods come from the
`modular.adapters` entry-point group of every installed package (the library's own are in its setup.py, so
this module names no paper) and from `register(name, "its.module:adapt")` at run time; nothing in the core
changes for a new method.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any, Callable, Mapping

from modular import bank

ENTRY_POINTS = "modular.adapters"       # the entry-point group a package declares its adapters in
_REGISTRY: dict[str, str] = {}          # run-time registrations; they win over installed entry points


@functools.cache
def _installed() -> dict[str, str]:
    """name -> 'module:attribute' from the installed packages' `modular.adapters` entry points."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def _registry() -> dict[str, str]:
    return {**_installed(), **_REGISTRY}


Adapter = Callable[..., bank.Adapted]


def register(method: str, target: str) -> None:
    """Adapt `method` with `target`, 'package.module:attribute' (imported when `method` is first used)."""
    module, sep, attribute = str(target).partition(":")
    if not (module and sep and attribute):
        raise ValueError(f"Adapter {target!r} for method {method!r} is not 'package.module:attribute'.")
    _REGISTRY[str(method)] = str(target)


def methods() -> list[str]:
    """The registered method names."""
    return list(_registry())


def target(method: str) -> str:
    """The 'module:attribute' that adapts `method`; one sentence if none is registered."""
    registry = _registry()
    if method not in registry:
        if not _installed():
            raise ValueError(f"Unknown adapt method {method!r}: no package declares '{ENTRY_POINTS}' entry points, "
                             f"so `modular` is not installed (run `pip install -e .` in the repository).")
        raise ValueError(f"Unknown adapt method {method!r}; known: {', '.join(registry)}.")
    return registry[method]


def get(method: str) -> Adapter:
    """The adapter of `method`, its module imported now."""
    where = target(method)
    module_name, _, attribute = where.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"Adapt method {method!r} is adapted by module {module_name!r}, which cannot be "
                         f"imported ({e}).") from None
    adapter = getattr(module, attribute, None)
    if not callable(adapter):
        raise ValueError(f"Module {module_name!r}, registered for adapt method {method!r}, has no callable "
                         f"{attribute!r}.")
    return adapter


def adapt(method: str, backbone: Any, dataset: Any, config: Any, *, seed: int, workdir: str, bank_path: str,
          meta: Mapping) -> bank.Adapted:
    """`method` adapted to `dataset` on `backbone` and written to `bank_path` (see the module docstring)."""
    adapted = get(method)(backbone, dataset, config, seed=seed, workdir=workdir, bank_path=bank_path, meta=meta)
    if not isinstance(adapted, bank.Adapted):
        raise TypeError(f"The adapter of {method!r} ({target(method)}) returned {type(adapted).__name__}, "
                        f"not a bank.Adapted.")
    return adapted


def phases(method: str, config: Any) -> list:
    """The training phases `method`'s adapter runs under `config` ([] when it declares none)."""
    declared = getattr(get(method), "phases", None)
    return list(declared(config)) if callable(declared) else []
