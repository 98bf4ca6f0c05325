"""`folder:PATH` and `npz:PATH` datasets: the user's own images, read into the in-memory format.

Image files are decoded and resized one by one with Pillow (their sizes differ, and `images.resize`
compiles once per input shape); npz arrays share one shape and go through `images.resize` as a batch.
Both then get their channels from `images.to_channels`, as the offline sets do.
"""
from __future__ import annotations

import concurrent.futures
import os
import zipfile
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

from modular.data import images, splits
from modular.data.dataset import Dataset

PREFIXES = ("folder:", "npz:")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Pillow's modes for 16-bit grayscale PNGs: converting them to "L" would clip every value above 255.
_WIDE_GRAY_MODES = ("I", "I;16", "I;16B", "I;16L")
_GRAY_MODES = ("1", "L", "LA")


def _parse(spec: str) -> tuple[str, str]:
    """'folder:~/pets' -> ('folder', '/home/me/pets'), checking that the path exists and has the right kind."""
    kind, _, given = spec.partition(":")
    if not given:
        raise ValueError(f"Dataset {spec!r} names no path; write {kind}:PATH.")
    path = os.path.abspath(os.path.expanduser(given))
    if not os.path.exists(path):
        raise ValueError(f"Dataset path {path!r} does not exist.")
    if kind == "folder" and not os.path.isdir(path):
        raise ValueError(f"Dataset path {path!r} is not a folder; folder:PATH needs one sub-folder per class.")
    if kind == "npz" and os.path.isdir(path):
        raise ValueError(f"Dataset path {path!r} is a folder; npz:PATH needs a file written by numpy.savez.")
    return kind, path


def fingerprint(spec: str) -> tuple:
    """Path, size and modification time of everything a load of `spec` reads: a cached load is valid while
    this is unchanged, and stat-ing is cheap next to decoding."""
    kind, path = _parse(spec)
    paths = [path]
    if kind == "folder":
        for folder, subfolders, names in os.walk(path):
            paths += [os.path.join(folder, name) for name in subfolders + names]
    stats = [(p, os.stat(p)) for p in paths]
    return tuple((p, stat.st_size, stat.st_mtime_ns) for p, stat in stats)


def load(spec: str, *, image_size: int, channels: int, seed: int, test_fraction: float) -> Dataset:
    """Reads a `folder:PATH` or `npz:PATH` dataset; without its own test set it is split by `seed`."""
    kind, path = _parse(spec)
    read = _read_folder if kind == "folder" else _read_npz
    return read(spec, path, image_size, channels, seed, test_fraction)


def read_images(paths: Sequence[str | os.PathLike], *, image_size: int, channels: int) -> np.ndarray:
    """Image files as float32 [N,image_size,image_size,channels] in [0,1], read exactly as `folder:` datasets
    are, so a model trained on a folder sees new files the way it saw its training images."""
    if int(image_size) != image_size or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    return _decode([os.fspath(p) for p in paths], int(image_size), channels, root=None)


# --- image files -------------------------------------------------------------------------------------------

def _pixels(img: Image.Image) -> np.ndarray:
    """A decoded image as float32 [H,W,1] (grayscale modes) or [H,W,3] in [0,1]; alpha is dropped."""
    if img.mode in _WIDE_GRAY_MODES:
        return np.clip(np.asarray(img, np.float32) / 65535.0, 0.0, 1.0)[..., None]
    if img.mode in _GRAY_MODES:
        return np.asarray(img.convert("L"), np.float32)[..., None] / 255.0
    return np.asarray(img.convert("RGB"), np.float32) / 255.0


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, antialiased when shrinking (as `images.resize`), per channel in Pillow's float mode."""
    if pixels.shape[:2] == (size, size):
        return pixels
    planes = [np.asarray(Image.fromarray(pixels[..., c]).resize((size, size), Image.Resampling.BILINEAR))
              for c in range(pixels.shape[-1])]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)


def _read_one(path: str, size: int, channels: int) -> np.ndarray | None:
    """One file as float32 [size,size,channels], or None when Pillow cannot decode it."""
    try:
        with Image.open(path) as img:
            img.draft(None, (size, size))  # JPEGs decode at a reduced scale: large photos load much faster
            pixels = _pixels(ImageOps.exif_transpose(img))  # phone photos store their rotation in EXIF
    except Exception:  # noqa: BLE001 - truncated or foreign files fail in many ways; each means "unreadable"
        return None
    return images.to_channels(_resize(pixels, size), channels)


def _decode(paths: list[str], size: int, channels: int, root: str | None) -> np.ndarray:
    """Decodes all `paths` (threads: Pillow releases the GIL) or names the unreadable ones in one sentence."""
    with concurrent.futures.ThreadPoolExecutor() as pool:
        decoded = list(pool.map(lambda p: _read_one(p, size, channels), paths))
    bad = [os.path.relpath(p, root) if root else p for p, img in zip(paths, decoded) if img is None]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        where = f" in {root!r}" if root else ""
        raise ValueError(f"{len(bad)} of {len(paths)} image files{where} cannot be read as images: {shown}.")
    if not decoded:
        return np.zeros((0, size, size, channels), np.float32)
    return np.stack(decoded).astype(np.float32, copy=False)


def _visible_subfolders(folder: str) -> list[str]:
    """Sorted sub-folder names, skipping hidden ones (.git, .ipynb_checkpoints)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _image_files(folder: str) -> list[str]:
    """Image files anywhere below `folder`, sorted so the seeded split is reproducible; hidden files (macOS
    '._x.jpg' copies) are skipped."""
    found = []
    for sub, subfolders, names in os.walk(folder):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        found += [os.path.join(sub, name) for name in names
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _class_files(root: str, where: str) -> dict[str, list[str]]:
    """Class name -> image files, for the class folders directly in `where` (`root` or a split under it)."""
    names = _visible_subfolders(where)
    if not names:
        raise ValueError(f"Dataset folder {where!r} has no class sub-folders; put each class's images in a "
                         f"sub-folder named after the class.")
    classes = {name: _image_files(os.path.join(where, name)) for name in names}
    for name, files in classes.items():
        if not files:
            raise ValueError(f"Class folder {os.path.relpath(os.path.join(where, name), root)!r} in {root!r} has "
                             f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}).")
    return classes


def _flatten(classes: dict[str, list[str]], class_names: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """All files with their labels, the index of their class in `class_names` (shared by train and test)."""
    files = [f for name in class_names for f in classes[name]]
    labels = [label for label, name in enumerate(class_names) for _ in classes[name]]
    return files, np.asarray(labels, np.int32)


def _read_folder(spec, root, size, channels, seed, test_fraction) -> Dataset:
    """Class folders in `root`, or in `root/train` and `root/test` when both exist."""
    subfolders = _visible_subfolders(root)
    has_train, has_test = "train" in subfolders, "test" in subfolders
    if has_train != has_test:
        present, missing = ("train", "test") if has_train else ("test", "train")
        raise ValueError(f"Dataset folder {root!r} has a {present}/ sub-folder but no {missing}/; give both "
                         f"(with the same class folders) or put the class folders directly in it.")
    if has_train:
        train, test = (_class_files(root, os.path.join(root, split)) for split in ("train", "test"))
        if set(train) != set(test):
            only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
            raise ValueError(f"Dataset folder {root!r} has different classes in train/ and test/: only in "
                             f"train: {', '.join(only_train) or '-'}; only in test: {', '.join(only_test) or '-'}.")
        class_names = tuple(train)
        train_files, train_labels = _flatten(train, class_names)
        test_files, test_labels = _flatten(test, class_names)
        x = _decode(train_files + test_files, size, channels, root)
        tr_x, te_x = x[:len(train_files)], x[len(train_files):]
    else:
        classes = _class_files(root, root)
        class_names = tuple(classes)
        files, labels = _flatten(classes, class_names)
        x = _decode(files, size, channels, root)
        tr, te = splits.train_test_indices(labels, test_fraction, seed)
        tr_x, train_labels, te_x, test_labels = x[tr], labels[tr], x[te], labels[te]
    return Dataset(name=spec, train_images=tr_x, train_labels=train_labels, test_images=te_x,
                   test_labels=test_labels, num_classes=len(class_names), class_names=class_names)


# --- npz arrays --------------------------------------------------------------------------------------------

def _arrays(path: str) -> dict[str, np.ndarray]:
    """The archive's arrays by name, refusing pickled objects (they could run code)."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        archive = None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"Dataset file {path!r} is not an npz archive; write one with "
                         f"numpy.savez(path, x=..., y=...).")
    with archive:
        try:
            return {key: archive[key] for key in archive.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"Dataset file {path!r} holds an object array, which only pickle could read (refused: "
                             f"it can run code); save numeric and string arrays.") from e


def _npz_images(x: np.ndarray, key: str, path: str, size: int, channels: int) -> np.ndarray:
    """[N,H,W] or [N,H,W,C] numbers -> float32 [N,size,size,channels]; uint8 and values above 1 are /255."""
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)) or 0 in x.shape or \
            not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"Images {key!r} in {path!r} have shape {x.shape} and dtype {x.dtype}; need a non-empty "
                         f"numeric [N,H,W] or [N,H,W,C] array with C 1 or 3.")
    scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0
    x = np.clip(x.astype(np.float32).reshape(x.shape[:3] + (-1,)) / scale, 0.0, 1.0)
    return images.to_channels(images.resize(x, size), channels)


def _npz_labels(y: np.ndarray, key: str, path: str) -> np.ndarray:
    """Class indices 0..k-1 as int32; whole-valued floats (as MATLAB writes them) count as integers."""
    if y.ndim != 1:
        raise ValueError(f"Labels {key!r} in {path!r} have shape {y.shape}; need one integer class per example "
                         f"(not one-hot rows).")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"Labels {key!r} in {path!r} must be integers, got dtype {y.dtype}.")
        fractional = y[~(np.isfinite(y) & (y == np.round(y)))]
        if len(fractional):
            raise ValueError(f"Labels {key!r} in {path!r} must be integers, got {fractional[0]}.")
    if len(y) and y.min() < 0:
        raise ValueError(f"Labels {key!r} in {path!r} must be 0..k-1, got {int(y.min())}.")
    return y.astype(np.int32)


def _check_lengths(x: np.ndarray, y: np.ndarray, x_key: str, y_key: str, path: str):
    if len(x) != len(y):
        raise ValueError(f"Dataset file {path!r} has {len(x)} images in {x_key!r} but labels for {len(y)} in "
                         f"{y_key!r}.")


def _read_npz(spec, path, size, channels, seed, test_fraction) -> Dataset:
    """Arrays x, y and optionally x_test, y_test and class_names from one npz file."""
    arrays = _arrays(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"Dataset file {path!r} has no {key!r} array (it holds: "
                             f"{', '.join(arrays) or 'nothing'}); need x, y and optionally x_test, y_test.")
    if ("x_test" in arrays) != ("y_test" in arrays):
        present, missing = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise ValueError(f"Dataset file {path!r} has {present!r} but no {missing!r}; give both or neither.")
    x, y = _npz_images(arrays["x"], "x", path, size, channels), _npz_labels(arrays["y"], "y", path)
    _check_lengths(x, y, "x", "y", path)
    if "x_test" in arrays:
        tr_x, train_labels = x, y
        te_x = _npz_images(arrays["x_test"], "x_test", path, size, channels)
        test_labels = _npz_labels(arrays["y_test"], "y_test", path)
        _check_lengths(te_x, test_labels, "x_test", "y_test", path)
    else:
        tr, te = splits.train_test_indices(y, test_fraction, seed)
        tr_x, train_labels, te_x, test_labels = x[tr], y[tr], x[te], y[te]
    num_classes = int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1
    class_names = None
    if "class_names" in arrays:
        class_names = tuple(arrays["class_names"].astype(str).reshape(-1).tolist())
        if len(class_names) < num_classes:
            raise ValueError(f"Dataset file {path!r} has {len(class_names)} class_names but labels up to "
                             f"{num_classes - 1}.")
        num_classes = len(class_names)
    return Dataset(name=spec, train_images=tr_x, train_labels=train_labels, test_images=te_x,
                   test_labels=test_labels, num_classes=num_classes, class_names=class_names)
