"""The streaming input path: per-process shards, exact resume with augmentation, evaluation preprocessing,
the automatic choice, and a pretraining run stopped and resumed on the stream."""
import os

import jax
import ml_collections
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

from configs import pretrain as pretrain_config  # noqa: E402
from modular import data, supervised  # noqa: E402
from modular.data import streaming  # noqa: E402

TOY_SIZE = 37


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """A real tfds dataset on disk, written offline: `mock_data` serves every split (and every slice of
    one) whole, so shards can only be told apart on real files. Example i has label i and every pixel i."""
    directory = str(tmp_path_factory.mktemp("tfds"))
    images = np.stack([np.full((10, 6, 3), i, np.uint8) for i in range(TOY_SIZE)])
    examples = lambda n: tf.data.Dataset.from_tensor_slices({"image": images[:n], "label": np.arange(n)})
    features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(10, 6, 3)),
                                           "label": tfds.features.ClassLabel(num_classes=TOY_SIZE)})
    tfds.dataset_builders.store_as_tfds_dataset(name="stream_toy", version="1.0.0", features=features,
                                                split_datasets={"train": examples(TOY_SIZE), "test": examples(11)},
                                                data_dir=directory)
    unlabelled = tf.data.Dataset.from_tensor_slices({"image": images[:4], "label": np.full(4, -1)})
    tfds.dataset_builders.store_as_tfds_dataset(name="stream_toy_val", version="1.0.0", features=features,
                                                split_datasets={"train": examples(12), "validation": examples(5),
                                                                "test": unlabelled}, data_dir=directory)
    return directory


def test_process_shards_are_disjoint_and_cover_the_split(toy_dir):
    ds = streaming.open_dataset("tfds:stream_toy", image_size=4, channels=1, data_dir=toy_dir, shuffle_buffer=8)
    assert (ds.num_train, ds.num_test, ds.num_classes) == (TOY_SIZE, 11, TOY_SIZE)
    train_seen, test_seen = [], []
    for process in range(2):
        steps = ds.steps_per_epoch(3, process_index=process, process_count=2)
        assert steps == (TOY_SIZE // 2) // 3
        batches = ds.local_train_batches(3, seed=1, process_index=process, process_count=2)
        epochs = [np.concatenate([next(batches)["label"] for _ in range(steps)]) for _ in range(2)]
        # Each epoch reads the whole shard once, in a new order.
        assert sorted(epochs[0]) == sorted(epochs[1]) and list(epochs[0]) != list(epochs[1])
        train_seen.append(set(epochs[0]))
        evaluated = list(ds.local_eval_batches("test", 4, process_index=process, process_count=2))
        assert len(evaluated) == 2  # both processes yield ceil(ceil(11 / 2) / 4) batches, padded
        test_seen.append([int(y) for b in evaluated for y, m in zip(b["label"], b["mask"]) if m])
    assert not train_seen[0] & train_seen[1]
    assert len(train_seen[0] | train_seen[1]) == TOY_SIZE - 1  # one example dropped so the shards are equal
    assert not set(test_seen[0]) & set(test_seen[1])
    assert sorted(test_seen[0] + test_seen[1]) == sorted(int(y) for y in ds.builder.as_dataset(split="test")
                                                         .map(lambda ex: ex["label"]).as_numpy_iterator())


def test_split_spec_is_divided_by_test_fraction(toy_dir):
    ds = streaming.open_dataset("tfds:stream_toy:train", image_size=4, channels=3, data_dir=toy_dir,
                                test_fraction=0.2)
    assert ds.num_train + ds.num_test == TOY_SIZE and ds.num_test in (7, 8)
    train = {int(y) for b in ds.local_eval_batches("train", 8) for y, m in zip(b["label"], b["mask"]) if m}
    test = {int(y) for b in ds.local_eval_batches("test", 8) for y, m in zip(b["label"], b["mask"]) if m}
    assert not train & test and len(train | test) == TOY_SIZE


def test_an_unlabelled_test_split_gives_way_to_validation(toy_dir):
    ds = streaming.open_dataset("tfds:stream_toy_val", image_size=4, channels=3, data_dir=toy_dir)
    assert (ds.train_split, ds.test_split, ds.num_train, ds.num_test) == ("train", "validation", 12, 5)


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_a_restarted_stream_sees_exactly_the_uninterrupted_batches():
    with tfds.testing.mock_data(num_examples=20):
        ds = streaming.open_dataset("tfds:cifar10", image_size=12, channels=3, shuffle_buffer=8)
        stream = ds.local_train_batches(4, seed=3)
        reference = [next(stream) for _ in range(12)]  # 5 steps per epoch: crosses two epoch boundaries
        for start in (3, 8):
            restarted = ds.local_train_batches(4, seed=3, start_step=start)
            for step in range(start, 12):
                _assert_same(next(restarted), reference[step])
        assert not np.array_equal(next(ds.local_train_batches(4, seed=4))["image"], reference[0]["image"])
        # Training images are augmented: none equals an example's evaluation view.
        plain = next(ds.local_eval_batches("train", 20))["image"]
        trained = np.concatenate([b["image"] for b in reference[:5]])
        assert not any(np.allclose(t, p, atol=0.02) for t in trained for p in plain)
        # The device-side stream: global arrays, any step order restarts it in the right place.
        with ds.train_batches(4, seed=3) as batch_fn:
            for step in (2, 3, 9, 10):
                batch = batch_fn(step)
                assert isinstance(batch["image"], jax.Array) and batch["image"].shape == (4, 12, 12, 3)
                _assert_same(batch, reference[step])


def test_eval_preprocessing_is_deterministic_with_the_right_shapes_and_range(toy_dir):
    with tfds.testing.mock_data(num_examples=10):
        ds = streaming.open_dataset("tfds:cifar10", image_size=24, channels=3)
        first, again = list(ds.local_eval_batches("test", 4)), list(ds.local_eval_batches("test", 4))
    for a, b in zip(first, again):
        _assert_same(a, b)
    images = np.concatenate([b["image"] for b in first])
    assert images.shape == (12, 24, 24, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images[:10].std() > 0.1
    assert np.concatenate([b["label"] for b in first]).dtype == np.int32
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in first]), [1.0] * 10 + [0.0] * 2)
    # Pixel values scale to [0, 1]; grayscale output from RGB input.
    toy = streaming.open_dataset("tfds:stream_toy", image_size=4, channels=1, data_dir=toy_dir)
    for batch in toy.local_eval_batches("test", 11):
        assert batch["image"].shape == (11, 4, 4, 1)
        np.testing.assert_allclose(batch["image"][:, :, :, 0],
                                   np.broadcast_to(batch["label"][:, None, None] / 255.0, (11, 4, 4)), atol=1e-6)
    # The central crop: a 64x32 image whose middle rows are white, resized to a 32-pixel short side
    # (28 / 0.875) and cropped to 28x28, is all white.
    image = np.zeros((64, 32, 3), np.uint8)
    image[16:48] = 255
    out = streaming.eval_image(tf, tf.constant(image), image_size=28, channels=3, native_channels=3).numpy()
    assert out.shape == (28, 28, 3)
    np.testing.assert_allclose(out, 1.0, atol=1e-6)


def test_automatic_choice_and_where_streaming_is_allowed(toy_dir, monkeypatch):
    cfg = ml_collections.ConfigDict(dict(name="tfds:stream_toy", image_size=4, channels=3, streaming="auto",
                                         max_in_memory_gb=4.0))
    assert not streaming.wanted(cfg, data_dir=toy_dir)
    cfg.max_in_memory_gb = 1e-6  # 48 examples x 4x4x3 float32 is 9 KB
    assert streaming.wanted(cfg, data_dir=toy_dir)
    assert streaming.mode("False") is False and streaming.mode("true") is True
    with pytest.raises(ValueError, match="must be 'auto', True or False"):
        streaming.mode("sometimes")
    with tfds.testing.mock_data(num_examples=4):
        mocked = ml_collections.ConfigDict(dict(name="tfds:cifar10", image_size=4, channels=3, streaming="auto",
                                                max_in_memory_gb=1e-9, max_train=None))
        assert not streaming.wanted(mocked)  # a mocked builder knows no sizes: in memory
        mocked.streaming = "true"
        with pytest.raises(ValueError, match="reads its data in memory"):
            data.load_for_training(mocked)
        assert isinstance(data.load_for_training(mocked, allow_streaming=True), data.StreamingDataset)
    with pytest.raises(ValueError, match="needs a tfds:NAME dataset"):
        streaming.wanted(ml_collections.ConfigDict(dict(name="digits", streaming=True)))


def _tiny_pretrain_config():
    config = pretrain_config.get_config("smoke")
    config.data.name, config.data.image_size, config.data.channels = "tfds:cifar10", 8, 3
    config.data.max_train, config.data.streaming, config.data.shuffle_buffer = None, "true", 16
    config.model.width = 4
    config.batch_size, config.num_steps, config.checkpoint_every, config.log_every = 8, 6, 3, 3
    return config


@pytest.mark.e2e
def test_pretraining_stopped_and_resumed_on_the_stream_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from experiments import pretrain
    config = _tiny_pretrain_config()
    # One epoch covers the run: mock_data swaps in a fake file system while a dataset is built, which
    # would hide the files of a checkpoint saved at the same moment (not so with real tfds).
    with tfds.testing.mock_data(num_examples=128):  # 16 steps per epoch; the run takes 6
        reference, ds = supervised.pretrained_backbone(config, "", verbose=False, streaming=True)
        assert isinstance(ds, data.StreamingDataset)

        original = streaming.TrainStream.__call__

        def killed_at_step_4(self, step):
            if step == 4:
                raise KeyboardInterrupt("simulated kill")
            return original(self, step)
        monkeypatch.setattr(streaming.TrainStream, "__call__", killed_at_step_4)
        with pytest.raises(KeyboardInterrupt):
            supervised.pretrained_backbone(config, str(tmp_path), verbose=False, streaming=True)
        monkeypatch.setattr(streaming.TrainStream, "__call__", original)
        resumed, _ = supervised.pretrained_backbone(config, str(tmp_path), verbose=False, streaming=True)
        assert resumed.fit.resumed_from == 3
        jax.tree.map(np.testing.assert_array_equal, resumed.variables, reference.variables)

        results = pretrain.run(config, str(tmp_path))  # the finished run: evaluation streams too
    assert results["streamed"] and results["num_test"] == 128 and results["resumed_from"] == 6
    assert 0.0 <= results["accuracy"] <= 1.0 and 0.0 <= results["train_accuracy"] <= 1.0
    assert os.path.isdir(tmp_path / "pretrain" / "checkpoints")
