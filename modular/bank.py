"""The task bank: one small file per (method, task) on a shared backbone, and what each cost.

Every method ends in the same record (`Adapted`: accuracy, what it trained, what it stores, how long it
took), so a leaderboard compares methods on equal terms, and `summarize` sets a bank's bytes against the
stand-alone models it replaces. The files themselves are `checkpoint.export_subtree` files, tagged with
the identity of the backbone they fit.

Serving knows no method: each manifest entry names, under `server`, the module that serves its file (the
paper's own, e.g. its `serving.py`), and that module's `load_task(entry, bank_dir, backbone,
allow_other_weights) -> ServedTask` puts the file back on its backbone (`load_served`). A server module may
also serve freshly adapted files in one mixed-task batch, checked against the models that adapting built
(`serve_mixed(source, bank_paths, models, datasets, examples_per_task, seed) -> dict`, reached by `serve_mixed`
here). A new method serves from a bank by writing its module's name into its entries; nothing in the core
changes.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np

from modular import reporting

BANK_DIR = "bank"            # a workdir's bank: WORKDIR/bank/<method>/<task>.msgpack and manifest.json
MANIFEST = "manifest.json"


@dataclasses.dataclass
class Adapted:
    """One method adapted to one task."""
    accuracy: float
    trainable: int           # task-private parameters that were trained
    stored: int              # values in the bank file (trained ones plus the statistics / indices they need)
    file_bytes: int          # size of the bank file
    seconds: float           # adaptation wall time (training, feature caching, selection), not the export
    full_model_bytes: int    # one stand-alone model of this family: what a bank file stands in for
    resumed: bool = False    # training restored from a checkpoint, so `seconds` is not a full adaptation
    info: dict = dataclasses.field(default_factory=dict)
    server: str = ""         # the module that serves the file (`load_served`); "" if none does
    entry: dict = dataclasses.field(default_factory=dict)   # what the method adds to the file's manifest entry
    model: Any = dataclasses.field(default=None, repr=False, compare=False)   # the adapted classifier, if any


def slug(name: str) -> str:
    """A dataset name as a file name (`tfds:svhn_cropped` -> `tfds_svhn_cropped`, `mnist5k/edges` -> `mnist5k-edges`)."""
    return name.replace(":", "_").replace("/", "-")


def task_file(bank_dir: str, method: str, task: str) -> str:
    """Where the bank keeps `method`'s file for `task`."""
    return os.path.join(bank_dir, method, f"{slug(task)}.msgpack")


def summarize(file_bytes: Mapping[str, Mapping[str, int]], full_model_bytes: Mapping[str, int],
              paths: Mapping[str, Mapping[str, str]]) -> dict:
    """Bank bytes per method (K tasks) vs K stand-alone models of that method's family, and in total."""
    per_method, files = {}, {}
    for method, per_task in file_bytes.items():
        k, stored = len(per_task), int(sum(per_task.values()))
        full = k * int(full_model_bytes[method])
        per_method[method] = dict(files=k, bytes=stored, k_full_models_bytes=full, fraction=stored / max(full, 1),
                                  full_model_bytes=int(full_model_bytes[method]))
        files.update({paths[method][t]: int(b) for t, b in per_task.items()})
    total = int(sum(m["bytes"] for m in per_method.values()))
    total_full = int(sum(m["k_full_models_bytes"] for m in per_method.values()))
    return dict(files=files, per_method=per_method, total_bytes=total, k_full_models_bytes=total_full,
                num_files=len(files), fraction=total / max(total_full, 1))


def leaderboard(adapted: Mapping[str, Mapping[str, Adapted]], tasks: list[str], what: Mapping[str, str]) -> list[dict]:
    """One row per method over `tasks`: mean and per-task accuracy (%), and per-task costs (means)."""
    rows = []
    for method, per_task in adapted.items():
        runs = [per_task[t] for t in tasks]
        mean = lambda f: float(np.mean([f(r) for r in runs]))
        rows.append(dict(
            method=method, what=what.get(method, ""), mean_acc=100 * mean(lambda r: r.accuracy),
            **{t: 100 * per_task[t].accuracy for t in tasks},
            trainable_per_task=int(round(mean(lambda r: r.trainable))),
            stored_params_per_task=int(round(mean(lambda r: r.stored))),
            stored_bytes_per_task=int(round(mean(lambda r: r.file_bytes))),
            fraction_of_full_model=mean(lambda r: r.file_bytes / r.full_model_bytes),
            adapt_seconds_per_task=mean(lambda r: r.seconds), resumed=any(r.resumed for r in runs)))
    return rows


def resolve(path: str) -> str:
    """The bank folder of `path`: the folder itself, or a workdir's `bank/` sub-folder."""
    inner = os.path.join(path, BANK_DIR)
    return inner if not os.path.exists(os.path.join(path, MANIFEST)) and os.path.isdir(inner) else path


def read_manifest(bank_dir: str) -> dict:
    """{task name: entry} of a bank ({} for a new one); one sentence if the manifest is unreadable."""
    path = os.path.join(bank_dir, MANIFEST)
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            return dict(json.load(f)["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"Bank manifest {path} is unreadable; move it away to start a new bank there.") from None


def add_to_manifest(bank_dir: str, task: str, entry: Mapping[str, Any]) -> dict:
    """Record (or replace) `task` in the bank's manifest: its method, file, classes, accuracy and size."""
    tasks = read_manifest(bank_dir)
    tasks[task] = dict(entry)
    reporting.write_json(os.path.join(bank_dir, MANIFEST), {"tasks": tasks})
    return tasks


# --------------------------------------------------------------------------- serving
@dataclasses.dataclass(frozen=True)
class ServedTask:
    """A bank task put back on its backbone, ready to answer.

    `logits(images) -> [N, classes]`. Tasks whose `group` is equal (not None) can answer one mixed batch
    together: `serve_group(members, ids, images)` gives each image the logits of `members[ids[i]]`, using each
    member's `payload` (what the method stacks, e.g. a patch)."""
    logits: Callable[[Any], Any]
    group: Hashable | None = None
    serve_group: Callable[[Sequence["ServedTask"], Any, Any], Any] | None = None
    payload: Any = None


def load_served(entry: Mapping[str, Any], bank_dir: str, backbone: Any, *, allow_other_weights: bool = False,
                task: str = "") -> ServedTask:
    """The task of manifest `entry` served by the module its `server` names (`load_task` there)."""
    module_name = entry.get("server")
    if not module_name:
        raise ValueError(f"Bank entry {task or entry.get('file')!r} in {bank_dir} names no server module (the "
                         f"manifest's \"server\" key): it was written by an older version; adapt the task again.")
    load = _server_function(module_name, "load_task", "(entry, bank_dir, backbone, allow_other_weights)",
                            f"bank entry {task or entry.get('file')!r}")
    served = load(entry, bank_dir, backbone, allow_other_weights=allow_other_weights)
    if not isinstance(served, ServedTask):
        raise TypeError(f"{module_name}.load_task returned {type(served).__name__}, not a bank.ServedTask.")
    return served


def _server_function(module_name: str, name: str, signature: str, of: str) -> Callable:
    """`name` of the server module `module_name` (named as the server of `of`), one sentence if it has none."""
    try:
        module = importlib.import_module(str(module_name))
    except ImportError as e:
        raise ValueError(f"{of[:1].upper()}{of[1:]} is served by module {module_name!r}, which cannot be imported "
                         f"({e}).") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"Module {module_name!r}, named as the server of {of}, has no {name}{signature} function.")
    return function


def serve_mixed(records: Sequence[Adapted], bank_paths: Sequence[str], datasets: Sequence[Any], source: Any, *,
                examples_per_task: int, seed: int) -> dict:
    """The bank files `records` wrote (one method: one server) on the `source` classifier, served in one
    mixed-task batch of each dataset's test examples by their server's `serve_mixed`, and checked against the
    models adapting built (`Adapted.model`)."""
    servers = {r.server for r in records}
    if len(servers) != 1 or not all(servers):
        raise ValueError(f"A mixed-task batch needs files of one server, got {sorted(servers)}.")
    serve = _server_function(servers.pop(), "serve_mixed",
                             "(source, bank_paths, models, datasets, examples_per_task, seed)", "these bank files")
    return serve(source, list(bank_paths), [r.model for r in records], list(datasets),
                 examples_per_task=examples_per_task, seed=seed)
