"""Datasets for `modular`: names -> in-memory `Dataset`s, step-pure batching, auxiliary views.

Names: `mnist5k`, `digits`, either with a corruption suffix (`mnist5k/blur`, ...),
`tfds:NAME[:SPLIT]` for any tensorflow-datasets dataset, and the user's own files: `folder:PATH` (one
sub-folder per class, optionally under `train/` and `test/`) and `npz:PATH` (arrays x, y[, x_test, y_test]).
`load_for_training` returns a `StreamingDataset` instead for `tfds:` sets too large for memory (see
`streaming`; `config.data.streaming`). `vtab_like.load_task` builds the offline VTAB-1k-like transfer targets (digits, corruptions, rotation /
location / count). `read_images` reads image files the way `folder:` datasets do.
"""
from __future__ import annotations

import functools

import numpy as np

from modular.data import corruptions, images, offline, splits, streaming, tfds_source, user_files, vtab_like
from modular.data.dataset import Dataset
from modular.data.pipeline import batch_at, batch_indices, multitask_batch
from modular.data.streaming import StreamingDataset
from modular.data.tasks import rotation_views
from modular.data.user_files import read_images

__all__ = ["Dataset", "StreamingDataset", "align_classes", "load", "load_for_training", "known_names", "read_images", "batch_at", "batch_indices", "multitask_batch",
           "rotation_views", "vtab_like"]

OFFLINE = tuple(offline.NUM_CLASSES)
CORRUPTIONS = tuple(corruptions.CORRUPTIONS)


def known_names() -> list[str]:
    """Every offline name, clean and corrupted; `tfds:NAME[:SPLIT]`, `folder:PATH` and `npz:PATH` are
    accepted on top of these."""
    return [b + s for b in OFFLINE for s in ("",) + tuple("/" + c for c in CORRUPTIONS)]


def _unknown(name: str) -> ValueError:
    return ValueError(f"Unknown dataset {name!r}; known: {', '.join(OFFLINE)} (optionally with a corruption "
                      f"suffix {', '.join('/' + c for c in CORRUPTIONS)}), tfds:NAME[:SPLIT], "
                      f"folder:PATH (one sub-folder per class) or npz:PATH (arrays x, y).")


def _readonly(ds: Dataset) -> Dataset:
    for a in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        a.setflags(write=False)
    return ds


@functools.lru_cache(maxsize=16)
def _load_offline(name: str, image_size: int, channels: int, seed: int, test_fraction: float,
                  split_seed: int) -> Dataset:
    """Resize -> corrupt (with `seed`) -> split (with `split_seed`); cached and read-only because experiments
    reload the same set often.

    The split depends only on labels and split_seed, so a clean set and its corruptions share the same
    train/test examples.
    """
    base, _, corruption = name.partition("/")
    x, y = offline.raw(base)
    x = images.resize(x, image_size)
    if corruption:
        x = corruptions.apply(corruption, x, seed)
    x = images.to_channels(x, channels)
    tr, te = splits.train_test_indices(y, test_fraction, split_seed)
    return _readonly(Dataset(name=name, train_images=x[tr], train_labels=y[tr], test_images=x[te],
                             test_labels=y[te], num_classes=offline.NUM_CLASSES[base]))


@functools.lru_cache(maxsize=4)
def _load_user_files(name: str, fingerprint: tuple, image_size: int, channels: int, seed: int,
                     test_fraction: float) -> Dataset:
    """Decoding a folder is slow and experiments reload it often; `fingerprint` (every file's size and
    modification time) is part of the cache key only, so an edited folder or file is read again."""
    del fingerprint
    return _readonly(user_files.load(name, image_size=image_size, channels=channels, seed=seed,
                                     test_fraction=test_fraction))


def load(name: str, *, image_size: int = 16, channels: int = 1, seed: int = 0, test_fraction: float = 0.2,
         max_train: int | None = None, split_seed: int | None = None) -> Dataset:
    """Loads a dataset by name as float32 [N,image_size,image_size,channels] images in [0,1].

    `seed` fixes random corruptions and the `max_train` draw (class-balanced); `split_seed` (default: `seed`)
    fixes the train/test split. A transfer target built from the images a backbone was pretrained on passes
    the pretraining's seed as `split_seed`: then every seed's test images come from the pretraining's test
    split, and no test image of any seed is an image the backbone was trained on.
    Offline and user-file (`folder:`, `npz:`) results are shared read-only arrays: copy before writing
    into them.
    """
    if not isinstance(name, str):
        raise _unknown(name)
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if max_train is not None and (int(max_train) != max_train or max_train < 1):
        raise ValueError(f"max_train must be a positive integer or None, got {max_train}.")
    split_seed = seed if split_seed is None else int(split_seed)
    if name.startswith("tfds:"):
        tr_x, tr_y, te_x, te_y, k = tfds_source.load(name, image_size=int(image_size), channels=channels,
                                                     seed=split_seed, test_fraction=test_fraction)
        names = tfds_source.class_names(name)
        ds = Dataset(name=name, train_images=tr_x, train_labels=tr_y, test_images=te_x, test_labels=te_y,
                     num_classes=k, class_names=names if names and len(names) == k else None)
    elif name.startswith(user_files.PREFIXES):
        ds = _load_user_files(name, user_files.fingerprint(name), int(image_size), channels, split_seed,
                              float(test_fraction))
    else:
        base, slash, corruption = name.partition("/")
        if base not in OFFLINE or (slash and corruption not in CORRUPTIONS):
            raise _unknown(name)
        ds = _load_offline(name, int(image_size), channels, int(seed), float(test_fraction), split_seed)
    check_usable(ds)
    return ds if max_train is None else ds.subset(max_train=int(max_train), seed=seed)


# Names that mean one class in two datasets: CIFAR-10's 'automobile' is STL-10's 'car'.
SYNONYMS = {"automobile": "car"}


def _canonical(name: str) -> str:
    name = str(name).strip().lower().replace("_", " ")
    return SYNONYMS.get(name, name)


def align_classes(a: Dataset, b: Dataset) -> tuple[Dataset, Dataset, list[str]]:
    """(a, b, shared names): two datasets whose label ids mean the same class, matched by class name.

    Recombining one network's head with another's extractor compares label ids across datasets, so an id must
    name one class in both. CIFAR-10 and STL-10 share 9 classes, but ids 1, 2, 6 and 7 name different ones
    (automobile/bird, bird/car, frog/horse, horse/monkey): both keep the classes whose names match
    (`SYNONYMS` joins 'automobile' and 'car'), relabelled 0..k-1 in `a`'s order, as Gygli et al. use the 9
    common classes. Datasets without class names (the offline digit sets, whose ids are the digits) must have
    the same number of classes and are returned as they are."""
    if a.class_names is None or b.class_names is None:
        if a.num_classes != b.num_classes:
            raise ValueError(f"Datasets {a.name!r} ({a.num_classes} classes) and {b.name!r} ({b.num_classes}) "
                             f"cannot share heads: their classes differ and have no names to match them by.")
        return a, b, [str(c) for c in range(a.num_classes)]
    in_b = {_canonical(n): i for i, n in enumerate(b.class_names)}
    shared = [(i, in_b[_canonical(n)]) for i, n in enumerate(a.class_names) if _canonical(n) in in_b]
    if len(shared) < 2:
        raise ValueError(f"Datasets {a.name!r} and {b.name!r} share {len(shared)} class name(s); recombining "
                         f"their components needs at least two common classes.")
    names = [_canonical(a.class_names[i]) for i, _ in shared]
    if len(shared) == a.num_classes == b.num_classes and all(i == j for i, j in shared):
        return a, b, names
    return (a.subset([i for i, _ in shared], relabel=True), b.subset([j for _, j in shared], relabel=True), names)


def check_usable(ds: Dataset) -> None:
    """One sentence, at load, for data no method can learn from honestly: fewer than two classes (a loss of 0
    and "100%" accuracy), pixels that are NaN or infinite, labels outside 0..num_classes-1."""
    present = np.unique(ds.train_labels)
    if int(ds.num_classes) < 2 or len(present) < 2:
        raise ValueError(f"Dataset {ds.name!r} has {len(present)} class(es) in its training split; a classifier "
                         f"needs at least two.")
    for split, pixels in (("training", ds.train_images), ("test", ds.test_images)):
        finite = np.isfinite(pixels).reshape(len(pixels), -1).all(axis=1)
        if not finite.all():
            raise ValueError(f"Dataset {ds.name!r} has {int((~finite).sum())} {split} image(s) with NaN or infinite "
                             f"pixels (the first is example {int(np.flatnonzero(~finite)[0])}).")
    for split, labels in (("training", ds.train_labels), ("test", ds.test_labels)):
        outside = (labels < 0) | (labels >= ds.num_classes)
        if outside.any():
            raise ValueError(f"Dataset {ds.name!r} has {split} label {int(labels[outside][0])} outside its "
                             f"{ds.num_classes} classes 0..{ds.num_classes - 1}.")


def load_for_training(data_config, *, seed: int = 0, allow_streaming: bool = False) -> Dataset | StreamingDataset:
    """`config.data` -> the in-memory `Dataset`, or a `StreamingDataset` when `data_config.streaming` says so
    ('auto': a `tfds:` set over `max_in_memory_gb` in memory) and the caller can consume one.

    Keys read besides name/image_size/channels/max_train (all optional): streaming ('auto' | True | False),
    max_in_memory_gb, shuffle_buffer, eval_crop_fraction, crop_area_min.
    """
    chosen = streaming.mode(data_config.get("streaming", "auto"))
    if chosen is True and not allow_streaming:
        raise ValueError("This experiment reads its data in memory; set --config.data.streaming=False "
                         "(streaming serves supervised pretraining, configs/pretrain.py).")
    if allow_streaming and streaming.wanted(data_config):
        if data_config.get("max_train"):
            raise ValueError(f"config.data.max_train applies to in-memory datasets; to stream fewer examples, "
                             f"name a split slice such as tfds:NAME:train[:{data_config.max_train}].")
        return streaming.open_dataset(
            data_config.name, image_size=int(data_config.image_size), channels=int(data_config.channels),
            shuffle_buffer=int(data_config.get("shuffle_buffer", 10_000)),
            crop_fraction=float(data_config.get("eval_crop_fraction", 0.875)),
            area_range=(float(data_config.get("crop_area_min", 0.08)), 1.0))
    return load(data_config.name, image_size=data_config.image_size, channels=data_config.channels, seed=seed,
                max_train=data_config.get("max_train"))
