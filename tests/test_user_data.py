"""Tests for `folder:PATH` and `npz:PATH` datasets and `data.read_images`: tiny files written in tmp_path."""
import os

import numpy as np
import pytest
from PIL import Image

from modular import data

# Class -> gray level of its (constant) images, so a label can be checked from the pixels.
LEVELS = {"dog": 40, "cat": 130, "bird": 220}


def _write(path, pixels, **save_args):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path, **save_args)


def _class_folders(root, per_class=5, shape=(12, 20, 3)):
    for name, level in LEVELS.items():
        for i in range(per_class):
            _write(os.path.join(root, name, f"{i}.png"), np.full(shape, level))
    return str(root)


def _assert_labels_match_levels(images, labels, class_names):
    assert images.dtype == np.float32 and labels.dtype == np.int32
    for img, label in zip(images, labels):
        np.testing.assert_allclose(img, LEVELS[class_names[label]] / 255.0, atol=1e-5)


def test_folder_class_names_labels_and_seeded_split(tmp_path):
    root = _class_folders(tmp_path / "pets")
    ds = data.load(f"folder:{root}", image_size=8, channels=3, seed=0, test_fraction=0.2)
    assert ds.class_names == ("bird", "cat", "dog") and ds.num_classes == 3
    assert ds.image_shape == (8, 8, 3) and len(ds.train_labels) == 12 and len(ds.test_labels) == 3
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1, 1, 1])  # stratified
    _assert_labels_match_levels(ds.train_images, ds.train_labels, ds.class_names)
    _assert_labels_match_levels(ds.test_images, ds.test_labels, ds.class_names)
    again = data.load(f"folder:{root}", image_size=8, channels=3, seed=0, test_fraction=0.2)
    np.testing.assert_array_equal(again.test_images, ds.test_images)
    assert not ds.train_images.flags.writeable  # shared like the offline sets


def test_folder_cache_sees_an_edited_file(tmp_path):
    root = _class_folders(tmp_path / "pets", per_class=2)
    spec = f"folder:{root}"
    before = data.load(spec, image_size=4)
    path = os.path.join(root, "dog", "0.png")
    _write(path, np.full((12, 20, 3), 255))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = data.load(spec, image_size=4)
    all_before = np.concatenate([before.train_images, before.test_images])
    all_after = np.concatenate([after.train_images, after.test_images])
    assert all_after.max() == pytest.approx(1.0) and all_before.max() < 0.9


def test_folder_with_train_and_test_subfolders(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for name in ("cat", "dog"):
            for i in range(count):
                _write(str(tmp_path / split / name / f"{i}.png"), np.full((6, 6), LEVELS[name]))
    ds = data.load(f"folder:{tmp_path}", image_size=6, channels=1)
    assert ds.class_names == ("cat", "dog")
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 0, 1, 1])
    _assert_labels_match_levels(ds.train_images, ds.train_labels, ds.class_names)
    _assert_labels_match_levels(ds.test_images, ds.test_labels, ds.class_names)


def test_resizing_and_channel_conversion(tmp_path):
    half = np.zeros((32, 32), np.uint8)
    half[:, 16:] = 255
    _write(str(tmp_path / "gray.png"), half)
    _write(str(tmp_path / "red.png"), np.stack([np.full((10, 30), 255), np.zeros((10, 30)), np.zeros((10, 30))], -1))
    gray_as_rgb, red_as_rgb = data.read_images([tmp_path / "gray.png", tmp_path / "red.png"], image_size=8,
                                               channels=3)
    np.testing.assert_array_equal(gray_as_rgb[..., 0], gray_as_rgb[..., 2])
    np.testing.assert_allclose(gray_as_rgb[:, :3], 0.0, atol=1e-6)
    np.testing.assert_allclose(gray_as_rgb[:, 5:], 1.0, atol=1e-6)
    np.testing.assert_allclose(red_as_rgb, np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 3)), atol=1e-6)
    red_as_gray = data.read_images([str(tmp_path / "red.png")], image_size=5, channels=1)
    assert red_as_gray.shape == (1, 5, 5, 1)
    np.testing.assert_allclose(red_as_gray, 1.0 / 3.0, atol=1e-6)


def test_read_images_formats_and_the_folder_reading_agree(tmp_path):
    pixels = np.full((9, 7, 3), 100, np.uint8)
    files = []
    for ext, args in ((".jpg", {"quality": 95}), (".jpeg", {}), (".bmp", {}), (".gif", {}),
                      (".webp", {"lossless": True}), (".PNG", {})):
        files.append(str(tmp_path / "only" / f"img{ext}"))
        _write(files[-1], pixels, **args)
    rgba = str(tmp_path / "only" / "rgba.png")
    _write(rgba, np.concatenate([pixels, np.zeros((9, 7, 1), np.uint8)], -1))
    wide = str(tmp_path / "only" / "wide.png")  # a 16-bit grayscale PNG
    Image.fromarray(np.full((9, 7), 100 * 257, np.uint16)).save(wide)
    files += [rgba, wide]
    for i in range(2):   # a dataset needs two classes, each on both sides of the split
        files.append(str(tmp_path / "second_class" / f"img{i}.png"))
        _write(files[-1], pixels)
    got = data.read_images(files, image_size=4, channels=3)
    assert got.shape == (len(files), 4, 4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, 100 / 255.0, atol=0.02)
    ds = data.load(f"folder:{tmp_path}", image_size=4, channels=3, test_fraction=0.5)
    both = np.concatenate([ds.train_images, ds.test_images])
    assert len(both) == len(files)
    np.testing.assert_allclose(np.sort(both.reshape(len(files), -1), 0),
                               np.sort(got.reshape(len(files), -1), 0), atol=0)
    assert data.read_images([], image_size=4, channels=1).shape == (0, 4, 4, 1)


def test_npz_split_and_uint8_scaling(tmp_path):
    y = np.repeat(np.arange(3), 4)
    x = np.broadcast_to((y * 100)[:, None, None], (12, 10, 10)).astype(np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=y.astype(np.float64))  # whole-valued floats count as integers
    ds = data.load(f"npz:{tmp_path / 'd.npz'}", image_size=5, channels=3, test_fraction=0.25)
    assert ds.num_classes == 3 and ds.class_names is None and ds.image_shape == (5, 5, 3)
    assert len(ds.train_labels) == 9 and len(ds.test_labels) == 3
    for images, labels in ((ds.train_images, ds.train_labels), (ds.test_images, ds.test_labels)):
        np.testing.assert_allclose(images, (labels * 100 / 255.0)[:, None, None, None] * np.ones((1, 5, 5, 3)),
                                   atol=1e-5)


@pytest.mark.parametrize("values,expected", [(0.5, 0.5), (127.5, 0.5)])
def test_npz_float_inputs_test_arrays_and_class_names(tmp_path, values, expected):
    x = np.full((4, 6, 6, 3), values, np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=[0, 1, 0, 1], x_test=x[:3], y_test=[0, 3, 1],
             class_names=np.array(["a", "b", "c", "d"]))
    ds = data.load(f"npz:{tmp_path / 'd.npz'}", image_size=6, channels=1)
    assert ds.num_classes == 4 and ds.class_names == ("a", "b", "c", "d")
    np.testing.assert_array_equal(ds.train_labels, [0, 1, 0, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 3, 1])
    np.testing.assert_allclose(ds.test_images, expected, atol=1e-6)


def test_max_train_and_subset_keep_class_names(tmp_path):
    root = _class_folders(tmp_path / "pets", per_class=6, shape=(4, 4))
    ds = data.load(f"folder:{root}", image_size=4, max_train=3, test_fraction=0.5)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [1, 1, 1])
    assert ds.class_names == ("bird", "cat", "dog")
    assert ds.subset(classes=[2, 0]).class_names == ("bird", "cat", "dog")
    picked = ds.subset(classes=[2, 0], relabel=True)
    assert picked.class_names == ("dog", "bird") and picked.num_classes == 2
    _assert_labels_match_levels(picked.test_images, picked.test_labels, picked.class_names)


def _pets(tmp_path):
    return _class_folders(tmp_path / "pets", per_class=2, shape=(4, 4))


def _unreadable(tmp_path):
    root = _pets(tmp_path)
    for i in range(5):
        with open(os.path.join(root, "cat", f"broken{i}.jpg"), "wb") as f:
            f.write(b"not an image")
    return f"folder:{root}", ["5 of 11 image files", "cat/broken0.jpg", "cat/broken2.jpg", "and 2 more"]


def _empty_class(tmp_path):
    root = _pets(tmp_path)
    os.makedirs(os.path.join(root, "fish"))
    with open(os.path.join(root, "fish", "notes.txt"), "w") as f:
        f.write("no images here")
    return f"folder:{root}", ["'fish'", "has no images"]


def _train_test_mismatch(tmp_path):
    for split, names in (("train", ("cat", "dog")), ("test", ("cat", "fox"))):
        for name in names:
            _write(str(tmp_path / split / name / "0.png"), np.zeros((4, 4)))
    return f"folder:{tmp_path}", ["only in train: dog", "only in test: fox"]


def _npz(tmp_path, **arrays):
    np.savez(tmp_path / "d.npz", **arrays)
    return f"npz:{tmp_path / 'd.npz'}"


def _not_npz(tmp_path):
    (tmp_path / "d.npz").write_text("plain text")
    return f"npz:{tmp_path / 'd.npz'}", ["not an npz archive"]


X = np.zeros((4, 5, 5), np.uint8)


def _one_class(tmp_path):
    for i in range(3):
        _write(str(tmp_path / "only" / f"{i}.png"), np.zeros((4, 4)))
    return f"folder:{tmp_path}"


def _with_nan():
    x = np.zeros((4, 5, 5), np.float32)
    x[2, 1, 1] = np.nan
    return x

ERRORS = {
    "missing folder": lambda p: (f"folder:{p / 'nowhere'}", ["does not exist"]),
    "missing npz": lambda p: (f"npz:{p / 'nowhere.npz'}", ["does not exist"]),
    "empty folder": lambda p: (f"folder:{p}", ["no class sub-folders"]),
    "class without images": _empty_class,
    "unreadable images": _unreadable,
    "train/test classes differ": _train_test_mismatch,
    "no x": lambda p: (_npz(p, y=[0, 1]), ["no 'x' array", "it holds: y"]),
    "no y": lambda p: (_npz(p, x=X), ["no 'y' array", "it holds: x"]),
    "lengths": lambda p: (_npz(p, x=X, y=[0, 1, 0]), ["4 images in 'x' but labels for 3 in 'y'"]),
    "test lengths": lambda p: (_npz(p, x=X, y=[0, 1, 0, 1], x_test=X, y_test=[0]),
                               ["4 images in 'x_test' but labels for 1 in 'y_test'"]),
    "float labels": lambda p: (_npz(p, x=X, y=[0, 0.5, 1, 1]), ["'y'", "must be integers, got 0.5"]),
    "negative labels": lambda p: (_npz(p, x=X, y=[0, -1, 1, 1]), ["'y'", "must be 0..k-1, got -1"]),
    "x_test alone": lambda p: (_npz(p, x=X, y=[0, 1, 0, 1], x_test=X), ["'x_test' but no 'y_test'"]),
    "rank": lambda p: (_npz(p, x=np.zeros((4, 5)), y=[0, 1, 0, 1]), ["'x'", "shape (4, 5)", "[N,H,W]"]),
    "channels": lambda p: (_npz(p, x=np.zeros((4, 5, 5, 2)), y=[0, 1, 0, 1]), ["shape (4, 5, 5, 2)"]),
    "not npz": _not_npz,
    "one class folder": lambda p: (_one_class(p), ["1 class(es)", "at least two"]),
    "one class npz": lambda p: (_npz(p, x=X, y=[0, 0, 0, 0]), ["1 class(es)", "at least two"]),
    "nan pixels": lambda p: (_npz(p, x=_with_nan(), y=[0, 1, 0, 1]), ["1 ", "image(s) with NaN or infinite"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_files_are_one_sentence_naming_the_path(tmp_path, case):
    spec, fragments = ERRORS[case](tmp_path)
    with pytest.raises(ValueError) as err:
        data.load(spec, image_size=4)
    message = str(err.value)
    assert "\n" not in message and message.endswith(".")
    assert str(tmp_path) in message
    for fragment in fragments:
        assert fragment in message


def test_read_images_names_unreadable_files(tmp_path):
    good, bad = str(tmp_path / "good.png"), str(tmp_path / "bad.png")
    _write(good, np.zeros((4, 4)))
    with open(bad, "wb") as f:
        f.write(b"\x89PNG truncated")
    with pytest.raises(ValueError) as err:
        data.read_images([good, bad, tmp_path / "missing.jpg"], image_size=4, channels=1)
    message = str(err.value)
    assert "\n" not in message and "2 of 3 image files" in message
    assert bad in message and str(tmp_path / "missing.jpg") in message and good not in message


def test_unknown_name_mentions_user_files():
    with pytest.raises(ValueError, match=r"folder:PATH .* npz:PATH"):
        data.load("myfolder")
