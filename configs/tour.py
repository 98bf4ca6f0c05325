"""The tour: one backbone, three targets, every method of the library on one leaderboard.

  python -m experiments.run --config=configs/tour.py --workdir=/tmp/tour            # CPU, ~10 min, offline
  python -m experiments.run --config=configs/tour.py:smoke --workdir=/tmp/tour_s    # seconds (tests)
  python -m experiments.run --config=configs/tour.py:full --workdir=gs://.../tour   # tfds, accelerators

The backbone is pretrained on config.data.name under WORKDIR/pretrain (the layout of configs/pretrain.py,
so a pretrain run's workdir is reused); targets are config.data.targets.
"""
import ml_collections

from configs import common
from modular.models import isometric

METHODS = ["linear", "sb_patch", "full_finetune", "mixture_weights", "head2toe"]


def get_config(arg: str = ""):
    arg = common.check_arg(arg)
    config = common.base_config(arg, experiment="tour")
    config.data.targets = ["digits", "mnist5k/edges", "mnist5k/invert"]
    config.data.max_train_target = 1000          # VTAB-1k-like: a thousand labelled examples per target
    config.data.max_test_target = common.optional_int()   # None: each target's whole test split
    config.methods = list(METHODS)
    # model patches: linear = last layer, sb_patch = S/B + last layer, full_finetune = every weight
    config.adapt = ml_collections.ConfigDict(dict(num_steps=200, batch_size=64, lr=3e-3))
    config.templates = ml_collections.ConfigDict(dict(
        model=isometric.default_config(width=16, expansion=2, depth=6, num_templates=3, stride=4),
        num_steps=300, batch_size=64, transfer_steps=200, mixture_lr_mult=3.0, entropy_weight=0.01))
    config.head2toe = ml_collections.ConfigDict(dict(
        target_size=256, fractions=[0.05, 0.2], coefs=[1e-3], lrs=[0.05], steps=200, folds=2))
    config.compat = ml_collections.ConfigDict(dict(
        task_a="mnist5k", task_b="digits", settings=["independent", "IIW+RP+DCC"], num_steps=200,
        batch_size=32, max_train=common.optional_int(1000)))
    config.serve = ml_collections.ConfigDict(dict(examples_per_task=64))
    if arg == "smoke":
        config.data.image_size = 8
        config.data.max_train = 256
        config.data.max_train_target = 128
        config.data.max_test_target = 200        # one test size for every target: evaluation compiles once
        config.model.width = 4
        config.num_steps = 20
        config.log_every = 10
        config.checkpoint_every = 0
        config.adapt.update(dict(num_steps=10, batch_size=32, lr=1e-2))
        config.templates.update(dict(
            model=isometric.default_config(width=8, expansion=2, depth=2, num_templates=2, stride=4, out_dim=16,
                                           se=False, bn_momentum=0.8),
            num_steps=20, batch_size=32, transfer_steps=10))
        config.head2toe.update(dict(target_size=32, fractions=[0.2], steps=30))   # one point: no CV fits
        config.compat.update(dict(settings=["IIW+RP+DCC"], num_steps=10, batch_size=16, max_train=128))
        config.serve.examples_per_task = 16
    elif arg == "full":
        config.data.targets = ["tfds:svhn_cropped", "tfds:stl10", "tfds:mnist"]
        config.data.max_train_target = 1000
        config.adapt.update(dict(num_steps=5_000, batch_size=128, lr=1e-2))
        config.templates.update(dict(
            model=isometric.default_config(width=64, expansion=4, depth=16, num_templates=8, stride=2, out_dim=256),
            num_steps=20_000, batch_size=128, transfer_steps=5_000))
        config.head2toe.update(dict(target_size=4096, fractions=[0.005, 0.02, 0.1], coefs=[1e-4, 1e-3],
                                    lrs=[0.01, 0.1], steps=2_000, folds=3))
        config.compat.update(dict(task_a="tfds:cifar10", task_b="tfds:stl10", num_steps=20_000, batch_size=128,
                                  max_train=None))
        config.serve.examples_per_task = 256
    return config
