"""A `:full` config as the training phases it runs: which model, at which batch, for how many steps.

Each experiment's training time is dominated by a few kinds of train step: pretraining the backbone,
adapting it with some subtrees frozen (patches, fine-tuning) and training pairs or multi-task models. A
phase names one kind, the number of steps and how many times the experiment repeats it (transfer modes,
targets, sweep settings). The projection compiles one step per distinct phase and multiplies.

This module knows no paper: each experiment declares its own phases next to its `run`, in
`experiments/NAME.py` (`phases(config) -> list[Phase]`, built with `phase` and `pretrain_phases`, and
`UNCOUNTED`, what its phases leave out), and `phases(config)` finds them by `config.experiment`, as
`experiments.run` finds the experiment. A phase whose network `models.build` does not make (compatible
components' extractors of two architectures behind one adapter) carries its own `build`.

Left out, and said so in each experiment's `uncounted`: evaluation and feature-extraction forward passes,
Head2Toe's linear heads on cached features, the auxiliary heads of compatible components (DCC, rotation),
template-mixture specific layers beyond the isometric trunk (the trunk is counted at the summed batch).
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

import ml_collections

_KNOWN_CLASSES = {"mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "svhn_cropped": 10,
                  "mnist": 10, "dtd": 47, "oxford_flowers102": 102, "eurosat": 10, "dmlab": 6,
                  "imagenet2012": 1000, "smallnorb#label_azimuth": 18, "smallnorb#label_elevation": 9}

# Training examples (the split named 'train'), for phases that run epochs.
_KNOWN_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000, "svhn_cropped": 73_257,
                      "mnist": 60_000}

FULL_IMAGE = (32, 32, 3)  # configs without their own image size (adapt: the backbone's) get the :full pretrain's


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    model: ml_collections.ConfigDict
    num_classes: int
    image_size: int
    channels: int
    batch_size: int
    steps: int
    repeats: int = 1                 # how many times the experiment trains this phase
    rules: tuple | None = None       # [(regex, lr multiplier)], the rest frozen; None: everything trains
    build: Callable | None = None    # (model, num_classes) -> the Flax module; None: models.build

    @property
    def image_shape(self) -> tuple:
        return (self.image_size, self.image_size, self.channels)


def num_classes(name: str) -> int:
    """Classes of a dataset name, without reading the data (tensorflow-datasets' metadata for tfds names)."""
    if name.startswith("tfds:"):
        from modular.data import tfds_source
        base, label = tfds_source.parse(name)[0], tfds_source.label_feature(name)
        key = base if label == "label" else f"{base}#{label}"
        if key in _KNOWN_CLASSES:
            return _KNOWN_CLASSES[key]
        import tensorflow_datasets as tfds
        return int(tfds.builder(base).info.features[label].num_classes)
    base = name.split("/")[0]
    if base in _KNOWN_CLASSES:
        return _KNOWN_CLASSES[base]
    raise ValueError(f"The projection knows no class count for dataset {name!r}.")


def train_size(name: str, max_train: int | None = None) -> int:
    """Training examples of a dataset name, without reading the data (tfds metadata for other tfds names)."""
    base = name.split("/")[0]
    if base.startswith("tfds:"):
        from modular.data import tfds_source
        base = tfds_source.parse(name)[0]
    size = _KNOWN_TRAIN_SIZES.get(base)
    if size is None and name.startswith("tfds:"):
        import tensorflow_datasets as tfds
        size = int(tfds.builder(base).info.splits["train"].num_examples)
    if size is None:
        raise ValueError(f"The projection knows no training-set size for dataset {name!r}.")
    return min(size, int(max_train)) if max_train else size


def phase(config, name, *, model=None, data=None, batch_size=None, steps=None, rules=None, **kw) -> Phase:
    """A phase of `config`: its model, data, batch and steps unless given (`data` names the dataset whose
    classes the head has); `rules` (e.g. a patch mode's `lr_rules`) train, the rest is frozen."""
    d = config.data
    return Phase(name=name, model=model or config.model, num_classes=kw.pop("num_classes", None) or num_classes(data or d.name),
                 image_size=int(kw.pop("image_size", None) or d.get("image_size") or FULL_IMAGE[0]),
                 channels=int(d.get("channels") or FULL_IMAGE[2]),
                 batch_size=int(batch_size or config.batch_size), steps=int(steps or config.num_steps),
                 rules=None if rules is None else tuple(rules), **kw)


def pretrain_phases(config) -> list[Phase]:
    """Pretraining the backbone, or with published weights (`model.init`) fitting only its classifier."""
    if config.model.get("init"):  # published weights: only a classifier is fitted, the rest frozen
        return [phase(config, "classifier on the loaded weights", rules=(("head/classifier/.*", 1.0),))]
    return [phase(config, "pretrain")]


# Experiments whose whole comparison repeats for each of `config.seeds` (protocol.seeds).
SEEDED = ("compat", "templates", "patches", "head2toe", "tour")


def seed_count(config) -> int:
    """How many times the experiment runs its phases: its seeds, where it compares methods over seeds."""
    from modular import protocol
    return len(protocol.seeds(config)) if config.get("experiment") in SEEDED else 1


def experiment(name):
    """The module that runs experiment `name` (`experiments.NAME`, as `experiments.run` finds it), which
    declares its phases (`phases(config)`) and what they leave out (`UNCOUNTED`)."""
    module = None
    if isinstance(name, str) and name.isidentifier():
        try:
            module = importlib.import_module(f"experiments.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"experiments.{name}":   # the experiment exists but fails to import: that error
                raise
    if module is None or not callable(getattr(module, "phases", None)):
        raise ValueError(f"The projection knows no experiment {name!r}: no experiments.{name} declares "
                         f"its phases(config).")
    return module


def phases(config) -> list[Phase]:
    """The training phases `config` runs once (per seed, see `seed_count`), by `config.experiment`."""
    return experiment(config.get("experiment")).phases(config)


def uncounted(config) -> str:
    """What `config`'s phases leave out of the count (its experiment's `UNCOUNTED`)."""
    return experiment(config.get("experiment")).UNCOUNTED
