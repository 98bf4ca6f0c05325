"""One adapt signature for every method, found by name: the core imports no paper.

An adapter adds one task to a bank:

  adapt(backbone, dataset, config, *, seed, workdir, bank_path, meta) -> bank.Adapted

It trains the method's task-private subtree for `dataset` (a `data.Dataset`) on the frozen `backbone` (a
`backbone.Backbone`: the classifier, its model config and input spec), reading its settings from the
experiment's `config` (each adapter says which keys it reads), keeps its runs under `workdir`, writes the
subtree to `bank_path` tagged with `meta`, and returns the bank record. The record's `server` names the
module that serves the file (`bank.load_served`; `bank.serve_mixed` for a mixed-task batch of its files), its
`entry` what the method adds to the file's manifest entry (e.g. the patch mode and the hyper-parameters it
chose) and its `model` the adapted classifier, when the method builds one. Optional attributes of an adapter:

  phases(config) -> [Phase]         the training phases one task's adaptation runs, for the projection
                                    (`modular.projection.phases`); none: it trains no network
  prepare(backbone, source, config, *, seed, workdir) -> backbone
                                    what the method adapts on, made once per experiment from the pretrained
                                    backbone and its source `data.Dataset` (template mixtures train their
                                    template bank on the source); none: the backbone itself
  prepare_phases(config) -> [Phase] the training phases `prepare` runs

A *study* is a paper's self-contained measurement that another experiment runs by name, beside the methods
(the tour closes with compatible components' recombination):

  study(config, *, seed, log) -> dict   (JSON-able results; it reads its own section of `config`)

with optional `check(config)` (raises one sentence on bad settings, before anything trains) and
`phases(config)`.

Both registries map a name to `"package.module:attribute"`; the module is imported only when the name is
used (as `bank.load_served` imports a manifest entry's `server`). Methods come from the `modular.adapters`
entry-point group of every installed package and studies from `modular.studies` (the library's own are in
its setup.py, so this module names no paper), and from `register(name, "its.module:adapt")` /
`register_study(name, "its.module:study")` at run time; nothing in the core changes for a new method.
"""
from __future__ import annotations

import functools
import importlib
import importlib.metadata
from typing import Any, Callable, Mapping

from modular import bank

ENTRY_POINTS = "modular.adapters"       # the entry-point group a package declares its adapters in
STUDY_ENTRY_POINTS = "modular.studies"  # ... and its studies in
_REGISTRY: dict[str, str] = {}          # run-time registrations; they win over installed entry points
_STUDIES: dict[str, str] = {}


@functools.cache
def _entry_points(group: str) -> dict[str, str]:
    """name -> 'module:attribute' from the installed packages' entry points of `group`."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=group)}


def _installed() -> dict[str, str]:
    return _entry_points(ENTRY_POINTS)


def _registry() -> dict[str, str]:
    return {**_installed(), **_REGISTRY}


def _study_registry() -> dict[str, str]:
    return {**_entry_points(STUDY_ENTRY_POINTS), **_STUDIES}


def _declared_phases(owner: Callable, attribute: str, config: Any) -> list:
    """`owner.attribute(config)` as a list: the phases an adapter or study declares ([] when it has none)."""
    declared = getattr(owner, attribute, None)
    return list(declared(config)) if callable(declared) else []


Adapter = Callable[..., bank.Adapted]


def _checked(target: str, what: str) -> str:
    module, sep, attribute = str(target).partition(":")
    if not (module and sep and attribute):
        raise ValueError(f"{what} is not 'package.module:attribute'.")
    return str(target)


def _import(where: str, what: str) -> Callable:
    """The callable `where` ('module:attribute') names, its module imported now; `what` names it in errors."""
    module_name, _, attribute = where.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what[:1].upper()}{what[1:]} is registered as module {module_name!r}, which cannot be imported ({e}).") from None
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ValueError(f"Module {module_name!r}, registered for {what}, has no callable {attribute!r}.")
    return found


def register(method: str, target: str) -> None:
    """Adapt `method` with `target`, 'package.module:attribute' (imported when `method` is first used)."""
    _REGISTRY[str(method)] = _checked(target, f"Adapter {target!r} for method {method!r}")


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
    return _import(target(method), f"adapt method {method!r}")


def adapt(method: str, backbone: Any, dataset: Any, config: Any, *, seed: int, workdir: str, bank_path: str,
          meta: Mapping) -> bank.Adapted:
    """`method` adapted to `dataset` on `backbone` and written to `bank_path` (see the module docstring)."""
    adapted = get(method)(backbone, dataset, config, seed=seed, workdir=workdir, bank_path=bank_path, meta=meta)
    if not isinstance(adapted, bank.Adapted):
        raise TypeError(f"The adapter of {method!r} ({target(method)}) returned {type(adapted).__name__}, "
                        f"not a bank.Adapted.")
    return adapted


def phases(method: str, config: Any) -> list:
    """The training phases `method`'s adapter runs for one task under `config` ([] when it declares none)."""
    return _declared_phases(get(method), "phases", config)


def prepare(method: str, backbone: Any, source: Any, config: Any, *, seed: int, workdir: str) -> Any:
    """The backbone `method` adapts on: its adapter's `prepare` of the pretrained `backbone` and its `source`
    dataset (runs under `workdir`), or `backbone` itself when it has none."""
    prepare_fn = getattr(get(method), "prepare", None)
    return prepare_fn(backbone, source, config, seed=seed, workdir=workdir) if callable(prepare_fn) else backbone


def prepare_phases(method: str, config: Any) -> list:
    """The training phases of `method`'s `prepare` under `config` ([] when it declares none)."""
    return _declared_phases(get(method), "prepare_phases", config)


# Studies: a paper's measurement another experiment runs by name (see the module docstring).

Study = Callable[..., dict]


def register_study(name: str, target: str) -> None:
    """Run study `name` with `target`, 'package.module:attribute' (imported when `name` is first used)."""
    _STUDIES[str(name)] = _checked(target, f"Study {target!r} for {name!r}")


def studies() -> list[str]:
    """The registered study names."""
    return list(_study_registry())


def study(name: str) -> Study:
    """The study registered as `name`, its module imported now."""
    registry = _study_registry()
    if name not in registry:
        raise ValueError(f"Unknown study {name!r}; known: {', '.join(registry) or 'none'} (the "
                         f"'{STUDY_ENTRY_POINTS}' entry points of the installed packages).")
    return _import(registry[name], f"study {name!r}")


def check_study(name: str, config: Any) -> None:
    """The study's own `check(config)`, when it has one: bad settings end here, before anything trains."""
    check = getattr(study(name), "check", None)
    if callable(check):
        check(config)


def study_phases(name: str, config: Any) -> list:
    """The training phases study `name` runs under `config` ([] when it declares none)."""
    return _declared_phases(study(name), "phases", config)
