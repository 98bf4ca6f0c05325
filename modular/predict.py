"""Predictions from a bank: each task's small file put back on the backbone it was trained on.

A bank (configs/adapt.py) holds `manifest.json` and one file per task; `BankPredictor` rebuilds a task from
its backbone's workdir and its file (checked against the backbone's weights) through the module its entry
names (`bank.load_served`: the core knows no method) and predicts. `predict_mixed` answers a batch whose
examples belong to different tasks: tasks of one serving group (e.g. patches of one mode and class count on
one backbone) run together in one jitted call, each example with its own patch; the others one call per task.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from modular import backbone as backbone_lib, bank


class BankPredictor:
    """The tasks of one bank, loaded lazily (each backbone once)."""

    def __init__(self, path: str, *, allow_other_weights: bool = False):
        """`path`: a bank folder, or the workdir of adapt runs (its `bank/` folder). `allow_other_weights` loads
        task files trained on other weights of their backbone's architecture (refused by default)."""
        self.allow_other_weights = bool(allow_other_weights)
        self.bank_dir = bank.resolve(path)
        self.manifest = bank.read_manifest(self.bank_dir)
        if not self.manifest:
            raise ValueError(f"{path} holds no bank (no {bank.MANIFEST}); adapt a task into it first.")

    @property
    def tasks(self) -> list[str]:
        return sorted(self.manifest)

    def entry(self, task: str) -> dict:
        if task not in self.manifest:
            raise ValueError(f"Task {task!r} is not in the bank {self.bank_dir}; it holds: {', '.join(self.tasks)}.")
        return self.manifest[task]

    def image_spec(self, task: str) -> tuple[int, int]:
        """(image size, channels) the task's backbone expects."""
        e = self.entry(task)
        return int(e["image_size"]), int(e["channels"])

    @functools.lru_cache(maxsize=8)
    def _backbone(self, path: str) -> backbone_lib.Backbone:
        return backbone_lib.load(path)

    @functools.lru_cache(maxsize=64)
    def served(self, task: str) -> bank.ServedTask:
        """`task` put back on its backbone by the module its manifest entry names."""
        e = self.entry(task)
        return bank.load_served(e, self.bank_dir, self._backbone(e["backbone"]),
                                allow_other_weights=self.allow_other_weights, task=task)

    def logits(self, task: str, images: np.ndarray) -> np.ndarray:
        """[N, classes] logits of `task` on images already at its backbone's size and channels."""
        return np.asarray(self.served(task).logits(images))

    def predict(self, task: str, images: np.ndarray) -> np.ndarray:
        """Class indices of `task` for each image (the manifest's `classes` names them)."""
        return self.logits(task, images).argmax(-1)

    def predict_mixed(self, tasks: Sequence[str], images: np.ndarray) -> np.ndarray:
        """Class index of each example under its own task `tasks[i]`."""
        tasks = list(tasks)
        if len(tasks) != len(images):
            raise ValueError(f"predict_mixed needs one task per image; got {len(tasks)} tasks for {len(images)} images.")
        out = np.zeros(len(images), np.int64)
        groups: dict[tuple, list[str]] = {}
        for task in dict.fromkeys(tasks):
            served = self.served(task)
            key = ("group", served.group) if served.group is not None and served.serve_group else ("task", task)
            groups.setdefault(key, []).append(task)
        for key, members in groups.items():
            rows = np.flatnonzero(np.isin(tasks, members))
            if key[0] == "task":
                out[rows] = self.predict(members[0], images[rows])
                continue
            served = [self.served(t) for t in members]
            ids = np.asarray([members.index(tasks[i]) for i in rows])
            out[rows] = np.asarray(served[0].serve_group(served, ids, images[rows])).argmax(-1)
        return out
