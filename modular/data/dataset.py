"""The in-memory dataset container every experiment consumes."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from modular.data import splits


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train/test arrays held in memory: the sets used here are small, and plain numpy
    keeps batching a pure function of the step.

    Images are float32 [N, H, W, C] in [0, 1]; labels are int32 [N]. `class_names`, where the source
    has them (folder datasets), names labels 0..num_classes-1 for reports and predictions.
    """
    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        # Catch mismatched arrays here rather than as a silent wrong result later.
        for split, x, y in (("train", self.train_images, self.train_labels),
                            ("test", self.test_images, self.test_labels)):
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise ValueError(f"Dataset {self.name!r} has inconsistent {split} arrays: images {x.shape} "
                                 f"and labels {y.shape} (need [N,H,W,C] and [N]).")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(f"Dataset {self.name!r} has train images {self.train_images.shape[1:]} "
                             f"but test images {self.test_images.shape[1:]}.")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"Dataset {self.name!r} has {len(self.class_names)} class names for "
                             f"{self.num_classes} classes.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    @property
    def num_test(self) -> int:
        return len(self.test_labels)

    def subset(self, classes: Sequence[int] | None = None, max_train: int | None = None, seed: int = 0,
               relabel: bool = False) -> "Dataset":
        """Keeps only `classes` (in both splits) and at most `max_train` training examples.

        With `relabel=True` the kept classes become 0..k-1 in the order given, `num_classes` becomes
        k and `class_names` follow; otherwise labels, `num_classes` and `class_names` stay, so a head
        trained on the subset still indexes the full label space. The cap is a class-balanced draw
        fixed by `seed`.
        """
        tr_x, tr_y = self.train_images, self.train_labels
        te_x, te_y = self.test_images, self.test_labels
        num_classes, class_names = self.num_classes, self.class_names
        if classes is not None:
            classes = [int(c) for c in classes]
            if not classes or len(set(classes)) != len(classes) or \
                    any(not 0 <= c < self.num_classes for c in classes):
                raise ValueError(f"subset classes {classes} must be distinct labels in "
                                 f"0..{self.num_classes - 1} for dataset {self.name!r}.")
            tr_keep, te_keep = np.isin(tr_y, classes), np.isin(te_y, classes)
            tr_x, tr_y, te_x, te_y = tr_x[tr_keep], tr_y[tr_keep], te_x[te_keep], te_y[te_keep]
            if relabel:
                lookup = np.full(self.num_classes, -1, np.int32)
                lookup[classes] = np.arange(len(classes), dtype=np.int32)
                tr_y, te_y = lookup[tr_y], lookup[te_y]
                num_classes = len(classes)
                if class_names is not None:
                    class_names = tuple(class_names[c] for c in classes)
        if max_train is not None:
            idx = splits.balanced_subset_indices(tr_y, max_train, seed)
            tr_x, tr_y = tr_x[idx], tr_y[idx]
        return dataclasses.replace(self, train_images=tr_x, train_labels=tr_y, test_images=te_x,
                                   test_labels=te_y, num_classes=num_classes, class_names=class_names)
