"""`tfds:NAME[:SPLIT][#LABEL]` datasets from tensorflow-datasets, converted to the in-memory format.

`#LABEL` names the class-label feature where a dataset has no `label` (VTAB's sNORB tasks:
`tfds:smallnorb#label_azimuth`, `tfds:smallnorb#label_elevation`).

tensorflow_datasets (and TensorFlow) are imported only here, inside the function, because
they take seconds to import and the offline sets never need them.
"""
from __future__ import annotations

import contextlib
import logging

import numpy as np

from modular.data import images as images_lib
from modular.data import splits


def label_feature(spec: str) -> str:
    """'tfds:smallnorb#label_azimuth' -> 'label_azimuth'; 'label' when the spec names none."""
    return spec.partition("#")[2] or "label"


def parse(spec: str) -> tuple[str, str | None]:
    """'tfds:svhn_cropped:train[:10%]' -> ('svhn_cropped', 'train[:10%]') (a '#LABEL' suffix is dropped)."""
    body = spec.partition("#")[0][len("tfds:"):]
    name, _, split = body.partition(":")
    if not name:
        raise ValueError(f"Dataset {spec!r} names no tensorflow-datasets dataset; write tfds:NAME[:SPLIT].")
    return name, split or None


def _to_numpy(ds, image_size: int, label: str = "label", batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Resizes in the tf.data pipeline (images may differ in size) and stacks to numpy."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    def prep(ex):
        img = tf.image.convert_image_dtype(ex["image"], tf.float32)  # scales by the dtype's max
        img = tf.image.resize(img, (image_size, image_size), method="bilinear", antialias=True)
        return tf.clip_by_value(img, 0.0, 1.0), tf.cast(ex[label], tf.int32)

    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                              .batch(batch)):
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the requested tensorflow-datasets split is empty.")
    return np.concatenate(xs), np.concatenate(ys)


@contextlib.contextmanager
def _quiet_downloads():
    """Download retries log a warning per file and attempt; the one sentence on failure says it all."""
    loggers = [logging.getLogger(n) for n in ("urllib3", "urllib3.connectionpool", "tensorflow_datasets", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _checked_builder(spec: str, data_dir: str | None = None):
    """(tfds module, builder) of a `tfds:` spec whose features hold an image and the class label."""
    name, _ = parse(spec)
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ValueError(f"Dataset {spec!r} needs tensorflow-datasets, which cannot be imported here ({e}); "
                         f"reinstall the project with pip install -e .") from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"Unknown tensorflow-datasets dataset {name!r} in {spec!r}; "
                         f"tfds.list_builders() lists the known names.") from e
    features, label = builder.info.features, label_feature(spec)
    if "image" not in features or label not in features:
        raise ValueError(f"Dataset {spec!r} needs 'image' and {label!r} features but has "
                         f"{sorted(features.keys())}; name its class label with tfds:NAME#FEATURE.")
    return tfds, builder


def prepared_builder(spec: str, *, data_dir: str | None = None):
    """The tfds builder of a `tfds:` spec with its data downloaded and prepared (one sentence on failure);
    the streaming path reads from it."""
    _, builder = _checked_builder(spec, data_dir)
    try:
        with _quiet_downloads():
            builder.download_and_prepare()
    except Exception as e:  # download and preparation errors come in many types
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"Dataset {spec!r} could not be prepared ({type(e).__name__}: {first}); "
                         f"tensorflow-datasets needs the network the first time.") from e
    return builder


# Class names of sets whose builders learn them only when the data is prepared (before that, and under
# tfds.testing.mock_data, the names are '0', '1', ...): the datasets' published label orders.
KNOWN_CLASS_NAMES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
}


def class_names(spec: str) -> tuple[str, ...] | None:
    """The names of a `tfds:` spec's classes: the builder's, or the published ones where the builder has only
    numbers before the data is prepared; None when neither is known."""
    name, _ = parse(spec)
    _, builder = _checked_builder(spec)
    names = tuple(str(n) for n in (getattr(builder.info.features[label_feature(spec)], "names", None) or ()))
    if names and names != tuple(str(i) for i in range(len(names))):
        return names
    known = KNOWN_CLASS_NAMES.get(name)
    return known if known and (not names or len(known) == len(names)) else (names or None)


def load(spec: str, *, image_size: int, channels: int, seed: int, test_fraction: float):
    """Returns (train_x, train_y, test_x, test_y, num_classes) for a `tfds:` spec.

    With a SPLIT, it is the whole pool and is split into train/test by `test_fraction`;
    without one, the dataset's own 'train' and 'test' are used ('train' is split when the
    dataset has no 'test').
    """
    name, split = parse(spec)
    tfds, builder = _checked_builder(spec)
    label = label_feature(spec)
    num_classes = int(builder.info.features[label].num_classes)

    def read(split_name):
        try:
            with _quiet_downloads():
                ds, info = tfds.load(name, split=split_name, with_info=True, shuffle_files=False)
        except Exception as e:  # download, preparation and split errors come in many types
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise ValueError(f"Dataset {spec!r} (split {split_name!r}) could not be loaded ({type(e).__name__}: "
                             f"{first}); tensorflow-datasets needs the network the first time.") from e
        return _to_numpy(ds, image_size, label), info

    if split is None:
        (train_x, train_y), info = read("train")
        # Mocked builders know no splits in advance and serve any name, so an empty dict means "try".
        if "test" in info.splits or not info.splits:
            (test_x, test_y), _ = read("test")
        else:
            split = "train"
            pool_x, pool_y = train_x, train_y
    else:
        (pool_x, pool_y), _ = read(split)
    if split is not None:
        tr, te = splits.train_test_indices(pool_y, test_fraction, seed)
        train_x, train_y, test_x, test_y = pool_x[tr], pool_y[tr], pool_x[te], pool_y[te]
    return (images_lib.to_channels(train_x, channels), train_y,
            images_lib.to_channels(test_x, channels), test_y, num_classes)
