"""Input throughput of the streaming tfds pipeline against the in-memory path, in one run.

  python -m benchmarks.input_pipeline [--batch 128] [--size 224] [--steps 10] [--rounds 3] [--examples 1024]
                                      [--source-size 256x320] [--mock]

The data is synthetic and offline: by default random JPEGs of --source-size written as a real tfds dataset
in a temporary folder (the reader, decoder and shuffle that ImageNet goes through), with --mock
`tfds.testing.mock_data`'s fake imagenet2012 (small random JPEGs made in Python per example, so the mock's
generator is timed too). Printed, in images/s: the stream on the host alone (decode, random resized crop,
flip, batch), the stream as `train.fit` consumes it (global arrays on the devices, from its prefetch
thread), and the in-memory path (`data.batch_at` gathers from float32 arrays already resized, then
`parallel.shard_batch`; no augmentation). Best of --rounds; the ratios are what carries over to other
machines, not the absolute figures.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time

import jax
import numpy as np

from benchmarks import steps as bench_steps
from modular import data, parallel, platform
from modular.data import streaming


def write_synthetic(directory: str, examples: int, height: int, width: int, seed: int = 0) -> str:
    """A tfds dataset of `examples` random JPEG images (1000 classes) under `directory`; returns its spec."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(16, height // 8, width // 8, 3), dtype=np.uint8)

    def make(n):
        for i in range(n):  # smooth-ish images compress like photos, unlike white noise
            image = np.kron(base[i % 16], np.ones((8, 8, 1), np.uint8))
            yield {"image": np.roll(image, i, axis=1), "label": int(rng.integers(1000))}

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(num_classes=1000)})
    signature = {"image": tf.TensorSpec((height // 8 * 8, width // 8 * 8, 3), tf.uint8),
                 "label": tf.TensorSpec((), tf.int64)}
    splits = {name: tf.data.Dataset.from_generator(lambda n=n: make(n), output_signature=signature)
              for name, n in (("train", examples), ("test", 64))}
    tfds.dataset_builders.store_as_tfds_dataset(name="synthetic_jpegs", version="1.0.0", features=features,
                                                split_datasets=splits, data_dir=directory)
    return "tfds:synthetic_jpegs"


def images_per_sec(fn, batch: int, num_steps: int, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(num_steps):
            jax.block_until_ready(fn())
        best = max(best, batch * num_steps / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = bench_steps.arg_parser(__doc__, models=None, steps=10, rounds=3,
                                    steps_help="batches timed per round")
    parser.add_argument("--examples", type=int, default=1024, help="training examples of the synthetic set")
    parser.add_argument("--source-size", default="256x320", help="HxW of the stored JPEGs (not with --mock)")
    parser.add_argument("--mock", action="store_true", help="tfds.testing.mock_data's imagenet2012 instead")
    parser.set_defaults(size=224)
    args = parser.parse_args()
    host = platform.tune_cpu() or ["library defaults (MODULAR_CPU_TUNING=off)"]
    import tensorflow_datasets as tfds

    with contextlib.ExitStack() as stack:
        if args.mock:
            stack.enter_context(tfds.testing.mock_data(num_examples=args.examples))
            spec, data_dir, source = "tfds:imagenet2012", None, "tfds mock imagenet2012 (small random JPEGs)"
        else:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory())
            height, width = (int(v) for v in args.source_size.lower().split("x"))
            t = time.perf_counter()
            spec = write_synthetic(data_dir, args.examples, height, width)
            source = f"{args.examples} synthetic {height}x{width} JPEGs on disk (written in {time.perf_counter() - t:.0f} s)"
        ds = streaming.open_dataset(spec, image_size=args.size, channels=3, data_dir=data_dir,
                                    shuffle_buffer=min(10_000, args.examples))
        host_stream = ds.local_train_batches(args.batch, seed=0)
        next(host_stream)  # builds the pipeline
        host_rate = images_per_sec(lambda: next(host_stream)["image"], args.batch, args.steps, args.rounds)

        stream = ds.train_batches(args.batch, seed=0)
        step = [0]

        def next_streamed():
            batch = stream(step[0])
            step[0] += 1
            return batch
        next_streamed()
        device_rate = images_per_sec(next_streamed, args.batch, args.steps, args.rounds)
        stream.close()

        # The in-memory path on the same images at the same size: preloaded float32 arrays.
        loaded = [b for b in ds.local_eval_batches("train", 64)]
        images = np.concatenate([b["image"][b["mask"] > 0] for b in loaded])
        labels = np.concatenate([b["label"][b["mask"] > 0] for b in loaded])
    mesh = parallel.make_mesh()
    memory_step = [0]

    def next_in_memory():
        batch = parallel.shard_batch(data.batch_at(images, labels, memory_step[0], args.batch, seed=0), mesh)
        memory_step[0] += 1
        return batch
    next_in_memory()
    memory_rate = images_per_sec(next_in_memory, args.batch, args.steps, args.rounds)

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, {os.cpu_count()} host CPUs; "
          f"host: {'; '.join(host)}")
    print(f"data: {source}; batch {args.batch} at {args.size}x{args.size}x3, best of {args.rounds} x {args.steps} steps")
    print(f"streaming, host pipeline (decode, crop, flip, batch): {host_rate:9.1f} images/s")
    print(f"streaming, global arrays on the devices (train.fit's input): {device_rate:9.1f} images/s")
    print(f"in memory, batch_at + shard_batch (no augmentation):  {memory_rate:9.1f} images/s "
          f"({images.nbytes / 2 ** 20:.0f} MiB held; streaming/in-memory {device_rate / memory_rate:.3f})")


if __name__ == "__main__":
    main()
