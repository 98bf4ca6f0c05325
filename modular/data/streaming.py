"""`tfds:` datasets too large for memory (ImageNet: about 190 GB at 224 px), streamed with tf.data.

Each process reads only its own shard (`tfds.split_for_jax_process`), decodes and augments on the host
(training: a random resized crop and a horizontal flip; evaluation: resize the shorter side and take the
central crop), batches its share of the global batch, and a background thread turns each local batch into
global arrays sharded over the mesh (`jax.make_array_from_process_local_data`) a few steps ahead of the
training loop.

Exact resume without iterator state. The stream is a pure function of (seed, process, step), like the
in-memory `batch_at`: epoch `e` of a shard is read with the file order and the shuffle buffer seeded by
(seed, process, e) and tf.data's deterministic ordering, its first `steps_per_epoch * local_batch` examples
are numbered consecutively, and example `i`'s crop and flip come from stateless random ops seeded by (seed,
process, i), never from global state. Restarting at step `s` rebuilds epoch `s // steps_per_epoch` and skips
the examples of its earlier steps before anything is decoded, so a killed and restarted run sees exactly the
batches of an uninterrupted one. The alternative, saving tf.data's iterator state beside each orbax
checkpoint, would store the shuffle buffer (GBs of encoded images per host) and tie the data state to the
checkpoint format; the price of recomputing is that a resume reads (without decoding) at most one epoch of
its shard.

Every process must see the same number of steps per epoch, so shards drop the remainder
(`drop_remainder=True`) and each epoch drops the examples that do not fill a batch, as `batch_at` does.
Evaluation reads every example: shards are padded to the same number of batches with `mask` 0 examples.
"""
from __future__ import annotations

import dataclasses
import fractions
import functools
import math
import queue
import threading
from typing import Any, Iterator

import jax
import numpy as np

from modular import parallel, rng
from modular.data import tfds_source


def mode(value: Any) -> str | bool:
    """`config.data.streaming` as 'auto', True or False (strings such as 'true'/'off' from flags too)."""
    if isinstance(value, str):
        text = value.strip().lower()
        value = {"auto": "auto", "true": True, "on": True, "yes": True, "1": True,
                 "false": False, "off": False, "no": False, "0": False}.get(text, value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if value != "auto":
        raise ValueError(f"config.data.streaming must be 'auto', True or False, got {value!r}.")
    return "auto"


def in_memory_bytes(spec: str, *, image_size: int, channels: int, data_dir: str | None = None) -> int | None:
    """Bytes the in-memory path would hold for `spec` (float32 images of every example it reads), or None
    when the dataset does not say how many examples it has (mocked builders)."""
    _, split = tfds_source.parse(spec)
    builder = tfds_source.prepared_builder(spec, data_dir=data_dir)
    if not builder.info.splits:
        return None
    try:
        count = (builder.info.splits[split].num_examples if split else
                 sum(s.num_examples for s in builder.info.splits.values()))
    except (KeyError, ValueError):
        return None
    return int(count) * image_size * image_size * channels * 4


def wanted(data_config, *, data_dir: str | None = None) -> bool:
    """Whether `data_config` (config.data) streams: its `streaming` key, or with 'auto' whether a `tfds:`
    dataset would take more than `max_in_memory_gb` in memory."""
    chosen = mode(data_config.get("streaming", "auto"))
    is_tfds = str(data_config.name).startswith("tfds:")
    if chosen is True and not is_tfds:
        raise ValueError(f"config.data.streaming=True needs a tfds:NAME dataset, got {data_config.name!r}.")
    if chosen != "auto" or not is_tfds:
        return bool(chosen) and is_tfds
    size = in_memory_bytes(data_config.name, image_size=int(data_config.image_size),
                           channels=int(data_config.channels), data_dir=data_dir)
    return size is not None and size > float(data_config.get("max_in_memory_gb", 4.0)) * 2 ** 30


def _tf():
    """TensorFlow for the host pipeline only: it must not claim an accelerator JAX uses."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # already initialised, or no such device type
        pass
    return tf


def _to_channels(tf, image, have: int, want: int):
    """Grayscale -> RGB by repeating, RGB(A) -> grayscale by the mean of R, G, B (as `images.to_channels`)."""
    if have == want:
        return image
    if have == 1:
        return tf.tile(image, [1, 1, want])
    rgb = image[..., :3]
    return rgb if want == 3 else tf.reduce_mean(rgb, axis=-1, keepdims=True)


def train_image(tf, image, seed, *, image_size: int, channels: int, native_channels: int, jpeg: bool,
                area_range=(0.08, 1.0), aspect_range=(3 / 4, 4 / 3)):
    """Random resized crop + horizontal flip of one image (encoded bytes or uint8 [H,W,C]), float32 in [0,1].

    `seed` ([2] int64) alone decides the crop and the flip (stateless ops): the same example index gives
    the same augmentation in every run. JPEGs decode only the crop window.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    encoded = image.dtype == tf.string
    if encoded and jpeg:
        shape = tf.image.extract_jpeg_shape(image)
    elif encoded:
        image = tf.io.decode_image(image, channels=native_channels, expand_animations=False)
        shape = tf.shape(image)
    else:
        shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_seed, min_object_covered=0.0,
        aspect_ratio_range=aspect_range, area_range=area_range, max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    if encoded and jpeg:
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        image = tf.image.decode_and_crop_jpeg(image, window, channels=native_channels)
    else:
        image = tf.slice(image, begin, size)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (image_size, image_size), method="bilinear",
                            antialias=True)
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    return tf.clip_by_value(_to_channels(tf, image, native_channels, channels), 0.0, 1.0)


def eval_image(tf, image, *, image_size: int, channels: int, native_channels: int, crop_fraction: float = 0.875):
    """Resize the shorter side to image_size / crop_fraction, take the central image_size square; float32 in [0,1]."""
    if image.dtype == tf.string:
        image = tf.io.decode_image(image, channels=native_channels, expand_animations=False)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    resize_to = math.ceil(image_size / crop_fraction)
    scaled = tf.cast(tf.math.round(shape * resize_to / tf.reduce_min(shape)), tf.int32)
    scaled = tf.maximum(scaled, image_size)
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, scaled, method="bilinear", antialias=True)
    top, left = (scaled[0] - image_size) // 2, (scaled[1] - image_size) // 2
    image = image[top:top + image_size, left:left + image_size]
    image = tf.ensure_shape(_to_channels(tf, image, native_channels, channels), (image_size, image_size, channels))
    return tf.clip_by_value(image, 0.0, 1.0)


@dataclasses.dataclass
class StreamingDataset:
    """A `tfds:` dataset read as a stream: what an experiment needs besides the batches themselves.

    Stands where an in-memory `Dataset` would (name, num_classes, image_shape, num_train, num_test) but
    holds no images; `train_batches` is a resumable `batch_fn` for `train.fit`, `eval_batches` reads a
    split once with evaluation preprocessing.
    """
    name: str
    num_classes: int
    image_size: int
    channels: int
    num_train: int
    num_test: int
    train_split: Any
    test_split: Any
    builder: Any = dataclasses.field(repr=False)
    shuffle_buffer: int = 10_000
    crop_fraction: float = 0.875
    area_range: tuple[float, float] = (0.08, 1.0)
    _counts: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_size, self.image_size, self.channels)

    @functools.cached_property
    def _image_feature(self):
        return self.builder.info.features["image"]

    def _read(self, split, *, shuffle_seed: int | None):
        """This split's examples as (image, label): images stay encoded (decoded after any skip)."""
        import tensorflow_datasets as tfds
        tf = _tf()
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False)
        # Image features are stored encoded; decoding waits until after the skip of a resume.
        decoders = {"image": tfds.decode.SkipDecoding()} if isinstance(self._image_feature, tfds.features.Image) \
            else None
        ds = self.builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None, read_config=read_config,
                                     decoders=decoders)
        label = tfds_source.label_feature(self.name)
        ds = ds.map(lambda ex: (ex["image"], tf.cast(ex[label], tf.int32)))
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options)

    def labelled(self, split) -> bool:
        """Whether `split` has labels (its first example's label is not -1, the tfds mark of none)."""
        first = next(iter(self._read(split, shuffle_seed=None).take(1)), None)
        return first is not None and int(first[1]) >= 0

    def count(self, split) -> int:
        """Examples in `split` (a name, a slice or a `tfds.even_splits` part)."""
        if repr(split) not in self._counts:
            n = int(self._read(split, shuffle_seed=None).cardinality())
            self._counts[repr(split)] = n if n >= 0 else int(self.builder.info.splits[split].num_examples)
        return self._counts[repr(split)]

    def _shard(self, split, process_index: int, process_count: int, drop_remainder: bool):
        import tensorflow_datasets as tfds
        return tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count,
                                          drop_remainder=drop_remainder)

    def steps_per_epoch(self, local_batch: int, *, process_index: int = 0, process_count: int = 1) -> int:
        shard = self.count(self._shard(self.train_split, process_index, process_count, True))
        if shard < local_batch:
            raise ValueError(f"Dataset {self.name!r} gives each of {process_count} process(es) {shard} training "
                             f"examples, fewer than its batch of {local_batch}.")
        return shard // local_batch

    def local_train_batches(self, local_batch: int, seed: int, start_step: int = 0, *, process_index: int = 0,
                            process_count: int = 1) -> Iterator[dict]:
        """This process's training batches from global step `start_step` on, forever: numpy
        dict(image=[local_batch,H,W,C] float32 in [0,1], label=[local_batch] int32)."""
        tf = _tf()
        shard = self._shard(self.train_split, process_index, process_count, True)
        per_epoch = self.steps_per_epoch(local_batch, process_index=process_index, process_count=process_count)
        epoch, step_in_epoch = divmod(int(start_step), per_epoch)
        augment_seed = rng.seed(seed, "augment", process_index)
        feature = self._image_feature
        prep = functools.partial(train_image, tf, image_size=self.image_size, channels=self.channels,
                                 native_channels=int(feature.shape[-1]), jpeg=feature.encoding_format == "jpeg",
                                 area_range=tuple(self.area_range))

        def augment(index, example):
            image, label = example
            return {"image": prep(image, tf.stack([tf.constant(augment_seed, tf.int64), index])), "label": label}

        while True:
            epoch_seed = rng.seed(seed, "shuffle", process_index, epoch)
            ds = (self._read(shard, shuffle_seed=epoch_seed)
                  .shuffle(self.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
                  .take(per_epoch * local_batch)
                  .enumerate(start=epoch * per_epoch * local_batch)
                  .skip(step_in_epoch * local_batch)
                  .map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                  .batch(local_batch, drop_remainder=True)
                  .prefetch(tf.data.AUTOTUNE))
            yield from ds.as_numpy_iterator()
            epoch, step_in_epoch = epoch + 1, 0

    def local_eval_batches(self, split: str, local_batch: int, *, max_examples: int | None = None,
                           process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
        """This process's share of `split` ('train' or 'test') with evaluation preprocessing: numpy
        dict(image, label, mask) batches; every process yields the same number of batches, padded with
        mask-0 examples. `max_examples` caps each process at its share of that many."""
        tf = _tf()
        source = {"train": self.train_split, "test": self.test_split}[split]
        total = self.count(source)
        largest = -(-total // process_count)                    # even splits differ by at most one example
        own = self._shard(source, process_index, process_count, False)
        take = largest if max_examples is None else min(largest, -(-int(max_examples) // process_count))
        num_batches = -(-take // local_batch)
        feature = self._image_feature
        prep = functools.partial(eval_image, tf, image_size=self.image_size, channels=self.channels,
                                 native_channels=int(feature.shape[-1]), crop_fraction=self.crop_fraction)
        ds = (self._read(own, shuffle_seed=None).take(take)
              .map(lambda image, label: {"image": prep(image), "label": label, "mask": tf.constant(1.0)},
                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True))
        blank = {"image": tf.zeros(self.image_shape, tf.float32), "label": tf.constant(0, tf.int32),
                 "mask": tf.constant(0.0)}
        ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat())
        yield from ds.take(num_batches * local_batch).batch(local_batch).prefetch(tf.data.AUTOTUNE).as_numpy_iterator()

    def train_batches(self, batch_size: int, seed: int, *, mesh=None, prefetch: int = 2) -> "TrainStream":
        return TrainStream(self, batch_size, seed, mesh=mesh, prefetch=prefetch)

    def eval_batches(self, split: str, batch_size: int, *, max_examples: int | None = None, mesh=None):
        """Global arrays dict(image, label, mask) over `split`, split along the mesh like training batches."""
        local = _local_batch(batch_size)
        sharding = parallel.data_sharding(mesh or parallel.make_mesh())
        for batch in self.local_eval_batches(split, local, max_examples=max_examples,
                                             process_index=jax.process_index(), process_count=jax.process_count()):
            yield _global(batch, sharding, batch_size)


def _local_batch(batch_size: int) -> int:
    parallel.check_batch_size(batch_size)
    if batch_size % jax.process_count():
        raise ValueError(f"Batch size {batch_size} is not divisible by the {jax.process_count()} processes.")
    return batch_size // jax.process_count()


def _global(local: dict, sharding, batch_size: int) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size,) + v.shape[1:])
            for k, v in local.items()}


class TrainStream:
    """`batch_fn(step)` for `train.fit` over a `StreamingDataset`: global arrays sharded over the mesh,
    prepared `prefetch` steps ahead by a background thread.

    Steps are expected in order; any other step (the first call, a resume) restarts the stream there,
    which gives the same batch as an uninterrupted stream (see the module docstring). Close it (or use it
    as a context manager) to stop the thread.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, seed: int, *, mesh=None, prefetch: int = 2):
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self._local = _local_batch(self.batch_size)
        self._sharding = parallel.data_sharding(mesh or parallel.make_mesh())
        self._prefetch = max(1, int(prefetch))
        self._next_step = None
        self._queue = self._stop = self._thread = None

    def __call__(self, step: int) -> dict:
        if step != self._next_step:
            self._start(int(step))
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        self._next_step = step + 1
        return item

    def _start(self, step: int) -> None:
        self.close()
        self._queue, self._stop = queue.Queue(maxsize=self._prefetch), threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(step, self._queue, self._stop),
                                        name="modular-stream", daemon=True)
        self._thread.start()

    def _produce(self, step: int, out: queue.Queue, stop: threading.Event) -> None:
        try:
            batches = self.dataset.local_train_batches(self._local, self.seed, step,
                                                       process_index=jax.process_index(),
                                                       process_count=jax.process_count())
            for local in batches:
                if not self._hand_over(_global(local, self._sharding, self.batch_size), out, stop):
                    return
        except BaseException as e:  # handed to the training loop, which raises it
            self._hand_over(e, out, stop)

    @staticmethod
    def _hand_over(item, out: queue.Queue, stop: threading.Event) -> bool:
        """Puts `item` in the queue unless the stream is closed first (False then)."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._thread, self._next_step = None, None

    def __enter__(self) -> "TrainStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_dataset(spec: str, *, image_size: int, channels: int, test_fraction: float = 0.2,
                 data_dir: str | None = None, shuffle_buffer: int = 10_000, crop_fraction: float = 0.875,
                 area_range: tuple[float, float] = (0.08, 1.0)) -> StreamingDataset:
    """A `StreamingDataset` for `tfds:NAME[:SPLIT]`.

    Splits: with SPLIT, that split is the pool, divided into train/test by `test_fraction` (as the
    in-memory path does); without, 'train' is trained on and the dataset's 'test' split is the test set
    where it has labels, else its 'validation' split (ImageNet, whose 'test' labels are all -1; the
    in-memory path would carve one from 'train'), else a `test_fraction` part of 'train'.
    """
    import tensorflow_datasets as tfds
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    _, split = tfds_source.parse(spec)
    builder = tfds_source.prepared_builder(spec, data_dir=data_dir)
    label = builder.info.features[tfds_source.label_feature(spec)]
    ds = StreamingDataset(name=spec, num_classes=int(label.num_classes),
                          image_size=int(image_size), channels=int(channels), num_train=0, num_test=0,
                          train_split="train", test_split="test", builder=builder,
                          shuffle_buffer=int(shuffle_buffer), crop_fraction=float(crop_fraction),
                          area_range=tuple(area_range))
    known = set(builder.info.splits)  # empty for mocked builders, which serve any split name
    if split is None and known and not ("test" in known and ds.labelled("test")):
        if "validation" in known:
            ds.test_split = "validation"
        else:
            split = "train"
    if split is not None:
        fraction = fractions.Fraction(test_fraction).limit_denominator(20)
        parts = tfds.even_splits(split, n=fraction.denominator)
        cut = fraction.denominator - fraction.numerator
        ds.train_split, ds.test_split = sum(parts[1:cut], parts[0]), sum(parts[cut + 1:], parts[cut])
    ds.num_train, ds.num_test = ds.count(ds.train_split), ds.count(ds.test_split)
    return ds
