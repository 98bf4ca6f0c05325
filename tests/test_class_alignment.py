"""Recombining components across datasets needs one label id per class in both: classes are matched by name."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from modular import data
from modular.data import Dataset

pytestmark = pytest.mark.unit


def _named(name, class_names, labels):
    x = np.zeros((len(labels), 2, 2, 1), np.float32)
    y = np.asarray(labels, np.int32)
    return Dataset(name=name, train_images=x, train_labels=y, test_images=x, test_labels=y,
                   num_classes=len(class_names), class_names=tuple(class_names))


def test_cifar10_and_stl10_share_nine_classes_mapped_by_name():
    with tfds.testing.mock_data(num_examples=40):
        cifar = data.load("tfds:cifar10", image_size=8, channels=3)
        stl = data.load("tfds:stl10", image_size=8, channels=3)
    assert cifar.class_names[1] == "automobile" and stl.class_names[2] == "car"   # ids 1, 2, 6, 7 differ
    a, b, shared = data.align_classes(cifar, stl)
    assert shared == ["airplane", "car", "bird", "cat", "deer", "dog", "horse", "ship", "truck"]
    assert a.num_classes == b.num_classes == 9
    assert [data._canonical(n) for n in a.class_names] == [data._canonical(n) for n in b.class_names] == shared
    # Every kept example keeps its class: its new id names the class its old id named.
    for before, after in ((cifar, a), (stl, b)):
        kept = np.isin([data._canonical(before.class_names[y]) for y in before.train_labels], shared)
        old_names = [data._canonical(before.class_names[y]) for y in before.train_labels[kept]]
        assert old_names == [shared[y] for y in after.train_labels]


def test_ids_are_remapped_not_reused():
    a = _named("a", ["cat", "dog", "frog"], [0, 1, 2, 1])
    b = _named("b", ["dog", "monkey", "Cat"], [0, 1, 2, 2])
    a2, b2, shared = data.align_classes(a, b)
    assert shared == ["cat", "dog"]
    assert list(a2.train_labels) == [0, 1, 1] and list(b2.train_labels) == [1, 0, 0]


def test_unnamed_classes_must_agree_in_number_and_too_few_shared_names_is_an_error():
    digits = data.load("digits", image_size=8)
    assert data.align_classes(digits, digits)[0] is digits
    with pytest.raises(ValueError, match="share 1 class name"):
        data.align_classes(_named("a", ["cat", "dog"], [0, 1]), _named("b", ["cat", "fox"], [0, 1]))
