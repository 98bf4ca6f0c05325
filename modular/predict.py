"""Predictions from a bank: each task's small file put back on the backbone it was trained on.

A bank (configs/adapt.py) holds `manifest.json` and one file per task; `BankPredictor` rebuilds a task's
model from its backbone's workdir and its file (checked against the backbone's weights) and predicts.
`predict_mixed` answers a batch whose examples belong to different tasks: the tasks that are patches of
one mode and class count on one backbone run together in one jitted call (each example with its own
patch), the others one call per task.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular import backbone as backbone_lib, bank, checkpoint, train
from modular.methods import head2toe, patches


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
    def _patched(self, task: str) -> tuple:
        """(model, start variables, patch tree) of a patch task."""
        e, bb = self.entry(task), self._backbone(self.entry(task)["backbone"])
        model, start = patches.target_start(bb.classifier, bb.model_cfg, int(e["num_classes"]),
                                            (bb.image_size, bb.image_size, bb.channels), seed=0)
        variables = patches.import_patch(os.path.join(self.bank_dir, e["file"]), start, e["mode"],
                                         allow_other_weights=self.allow_other_weights)
        return model, start, variables

    def logits(self, task: str, images: np.ndarray) -> np.ndarray:
        """[N, classes] logits of `task` on images already at its backbone's size and channels."""
        e = self.entry(task)
        if e["method"] != "head2toe":
            model, _, variables = self._patched(task)
            return np.asarray(train.predict(patches.eval_logits(model), variables, images))
        bb = self._backbone(e["backbone"])
        tree, meta = checkpoint.import_subtree(os.path.join(self.bank_dir, e["file"]),
                                               backbone=bb.classifier.variables["params"],
                                               allow_other_weights=self.allow_other_weights)
        features = head2toe.features_fn(bb.classifier.model, tuple(meta["layers"]), int(meta["target_size"]), "eval")
        kept, w, b = jnp.asarray(tree["features"]), jnp.asarray(tree["head"]["w"]), jnp.asarray(tree["head"]["b"])
        return np.asarray(train.predict(lambda v, batch: features(v, batch["image"])[0][:, kept] @ w + b,
                                        bb.classifier.variables, images))

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
            e = self.entry(task)
            key = (e["backbone"], e["mode"], e["num_classes"]) if e["method"] != "head2toe" else ("task", task)
            groups.setdefault(key, []).append(task)
        for key, members in groups.items():
            rows = np.flatnonzero(np.isin(tasks, members))
            if key[0] == "task":
                out[rows] = self.predict(members[0], images[rows])
                continue
            model, start, _ = self._patched(members[0])
            mode = key[1]
            patch_of = [patches.split_private(self._patched(t)[2], mode)[1] for t in members]
            stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *patch_of)
            ids = np.asarray([members.index(tasks[i]) for i in rows])
            serve = patches.make_mixed_server(model, start)
            out[rows] = np.asarray(serve(stacked, ids, images[rows])).argmax(-1)
        return out
