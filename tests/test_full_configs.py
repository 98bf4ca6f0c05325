"""Every `configs/NAME.py:full` runs end to end on tensorflow-datasets' mock data, offline.

The models are the configs' own (paper-sized widths, depths and image sizes); only what sets the run's
length is cut: two steps, small batches, tiny data (every loaded set capped at CAP_TRAIN / CAP_TEST
examples, offline sets included) and grids, one seed. So the path a user takes on an accelerator cannot
silently break. `tfds.testing.mock_data` fakes each dataset from its builder's feature spec (random images
and labels, no files, no network). Most of the time goes to compiling the paper-sized train steps (tens of
seconds each on CPU), so every method run here is a class of its own that pytest-xdist places on a free worker.
"""
import dataclasses
import importlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from experiments import project, run as runner
from modular import data

MOCK_EXAMPLES = 24
CAP_TRAIN, CAP_TEST = 64, 32


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    """Every `data.load` in these runs returns at most CAP_TRAIN / CAP_TEST examples: evaluating a paper-sized
    model on an offline set's full test split (templates' :full reads mnist5k) costs minutes on CPU."""
    original = data.load

    def capped(*args, **kwargs):
        ds = original(*args, **kwargs)
        keep_train = np.random.default_rng(0).permutation(len(ds.train_labels))[:CAP_TRAIN]
        keep_test = np.random.default_rng(1).permutation(len(ds.test_labels))[:CAP_TEST]
        return dataclasses.replace(ds, train_images=ds.train_images[keep_train], train_labels=ds.train_labels[keep_train],
                                   test_images=ds.test_images[keep_test], test_labels=ds.test_labels[keep_test])

    monkeypatch.setattr(data, "load", capped)


def full_config(name):
    return importlib.import_module(f"configs.{name}").get_config("full")


def shrink(node, optional=False, **values):
    """Set these keys. A key the config lacks fails the test (a renamed key would otherwise silently stop being
    cut and the run grow), unless `optional`: the keys every config is cut by, which not all of them have."""
    for key, value in values.items():
        if key in node:
            node[key] = value
        else:
            assert optional, f"the :full config has no key {key!r} to cut; update tiny()"


def tiny(name):
    """`name`'s :full config with its paper-sized model and run lengths cut to seconds."""
    c = full_config(name)
    shrink(c, optional=True, seeds=1, num_steps=2, batch_size=8, log_every=1, checkpoint_every=0)
    shrink(c.optim, optional=True, warmup_steps=0)
    if name == "compat":
        shrink(c.compat, settings=("IIW+RP+DCC",), upper_bound=False,
               harder_rp="", same_data=(), incremental_orders=(), eval_points=1, transfer_epochs=1,
               fast_transfer_settings=("IIW+RP",), transfer_lrs=(1e-2,))
    if name == "templates":
        shrink(c, transfer_steps=2, interp_score_examples=16, interp_tune_steps=2,
               transfer_inits=["source", "accuracy_interp"])   # each init compiles a paper-sized step
        c.tasks = list(c.tasks)[:2]
    if name == "patches":
        shrink(c.transfer, num_steps=2, batch_size=8, lrs=[1e-2], modes=["sb_last", "dw_last"])
        shrink(c.multitask, num_steps=2, batch_size=4, max_train=16)
        c.multitask.tasks = list(c.multitask.tasks)[:2]
        shrink(c.multires, num_steps=2, batch_size=4, baselines=False)
        c.multires.resolutions = list(c.multires.resolutions)[:2]
    if name == "head2toe":
        c.data.targets = list(c.data.targets)[:1]   # every target's data: test_full_config_datasets_load
        shrink(c.data, max_train_target=16, max_test_target=16)
        shrink(c.head2toe, target_size=32, fractions=[0.1], coefs=[1e-3], lrs=[0.1], steps=[2], folds=2, batch_size=8,
               baseline_coefs=dict(l1=[1e-3], l2=[1e-3], l21=[1e-3]))
    if name == "tour":
        c.data.targets = list(c.data.targets)[:1]
        shrink(c.data, max_train_target=16, max_test_target=16)
        shrink(c.adapt, num_steps=2, batch_size=8)
        shrink(c.templates, num_steps=2, batch_size=8, transfer_steps=2)
        shrink(c.head2toe, target_size=32, fractions=[0.1], coefs=[1e-3], lrs=[0.1], steps=2, folds=2)
        shrink(c.compat, num_steps=2, batch_size=8, settings=["IIW+RP+DCC"])
        shrink(c.serve, examples_per_task=8)
    if name == "adapt":
        shrink(c.adapt, num_steps=2, batch_size=8, lrs=(1e-2,))
    return c


def tfds_names(config) -> set:
    """Every `tfds:` dataset a config names, anywhere in it."""
    found, stack = set(), [config.to_dict()]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
        elif isinstance(node, str) and node.startswith("tfds:"):
            found.add(node)
    return found


def test_full_config_datasets_load():
    # Every tfds dataset of every :full config loads (its builder's metadata is offline) at that size.
    configs = [full_config(c) for c in project.FULL_CONFIGS]
    wanted = {(name, c.data.get("image_size", 32)) for c in configs for name in tfds_names(c)}
    assert {"tfds:cifar10", "tfds:svhn_cropped", "tfds:cifar100"} <= {n for n, _ in wanted}
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        for name, size in sorted(wanted):
            ds = data.load(name, image_size=size, channels=3, seed=0)
            assert ds.train_images.shape[1:] == (size, size, 3) and ds.num_classes > 1, name
            assert ds.train_labels.max() < ds.num_classes, name


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The :full pretraining run (ResNet-20 on CIFAR-10 shapes), the backbone configs/adapt.py:full starts from."""
    workdir = str(tmp_path_factory.mktemp("pretrain_full"))
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        results = runner.run(tiny("pretrain"), workdir)
    return workdir, results


def test_pretrain_full(pretrained):
    _, results = pretrained
    assert results["dataset"] == "tfds:cifar10" and results["params"]["total"] > 250_000   # ResNet-20


def test_adapt_full(pretrained, tmp_path):
    config = tiny("adapt")
    config.backbone = pretrained[0]
    config.data.name = "tfds:svhn_cropped"
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        results = runner.run(config, str(tmp_path))
    assert 0.0 <= results["accuracy"] <= 1.0


def numbers(tree, path=""):
    """(path, value) of every number in a results tree."""
    if isinstance(tree, dict):
        return [pair for k, v in tree.items() for pair in numbers(v, f"{path}/{k}")]
    if isinstance(tree, (list, tuple)):
        return [pair for i, v in enumerate(tree) for pair in numbers(v, f"{path}/{i}")]
    return [(path, tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def run_method(name, workdir):
    """The run finishes, and what it reports is sane: accuracies in [0, 1] (or percent), no infinite number,
    and NaN only where one seed leaves a spread undefined."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        results = runner.run(tiny(name), str(workdir))
    assert results and "attempts" in results
    values = numbers(results)
    assert not [p for p, v in values if np.isinf(v)], name
    nans = [p for p, v in values if np.isnan(v)]
    assert all(any(s in p.lower() for s in ("se", "std", "interval", "ci", "corr", "tau", "r_")) for p in nans), nans[:5]
    accuracies = [v for p, v in values if "acc" in p.split("/")[-1].lower() and np.isfinite(v)]
    assert accuracies and all(0.0 <= v <= 100.0 for v in accuracies), name
    return results


# One class per method run: pytest-xdist (--dist loadscope, pytest.ini) hands each class to a free worker, so the
# five runs (1.5-3.5 CPU-minutes each) spread over the cores instead of queueing behind one another.
@pytest.mark.full
class TestPatchesFull:
    def test_runs(self, tmp_path):
        run_method("patches", tmp_path)


@pytest.mark.full
class TestCompatFull:
    def test_runs(self, tmp_path):
        run_method("compat", tmp_path)


@pytest.mark.full
class TestTemplatesFull:
    def test_runs(self, tmp_path):
        run_method("templates", tmp_path)


@pytest.mark.full
class TestHead2ToeFull:
    def test_runs(self, tmp_path):
        run_method("head2toe", tmp_path)


@pytest.mark.full
class TestTourFull:
    def test_runs(self, tmp_path):
        run_method("tour", tmp_path)
