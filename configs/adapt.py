"""Adapt a saved backbone to your data: one task-private subtree into a bank, chosen on validation.

  python -m experiments.run --config=configs/adapt.py --workdir=DIR --config.backbone=PRETRAIN_WORKDIR \\
      --config.data.name=folder:PATH --config.method=sb_patch [--config.task=NAME]
  python -m experiments.predict --bank=DIR --task=NAME --images=PATH_OR_FOLDER [--csv=OUT.csv]

`backbone` is the workdir of a pretrain run (configs/pretrain.py) or of the tour; the image size and
channels come from it. Methods: linear (last layer), sb_patch (BN scale-and-bias + last layer), dw_patch
(depthwise kernels + last layer, MobileNetV2), mixture (template-mixture weights + S/B + last layer, an
isometric backbone with templates), head2toe (feature selection + linear head). Many tasks share one workdir:
each adds `DIR/bank/<method>/<task>.msgpack` and an entry in `DIR/bank/manifest.json` (the tour's layout).
"""
import ml_collections

from configs import common

METHODS = ("linear", "sb_patch", "dw_patch", "mixture", "head2toe")


def get_config(arg: str = ""):
    arg = common.check_arg(arg)
    config = common.base_config(arg, experiment="adapt")
    config.backbone = ""                 # a pretrain run's workdir (required)
    config.task = ""                     # the task's name in the bank; default: the dataset name
    config.method = "sb_patch"
    # image size and channels are the backbone's; val_fraction of the training data chooses the learning rate
    config.data = ml_collections.ConfigDict(dict(
        name="digits", max_train=ml_collections.FieldReference(None, field_type=int), val_fraction=0.2))
    config.adapt = ml_collections.ConfigDict(dict(num_steps=300, batch_size=64, lrs=(1e-3, 3e-3, 1e-2)))
    config.head2toe = ml_collections.ConfigDict(dict(
        target_size=256, fractions=(0.05, 0.2), coefs=(1e-3,), lrs=(0.05,), steps=200, folds=2))
    if arg == "smoke":
        config.adapt.update(dict(num_steps=10, batch_size=16, lrs=(3e-3, 1e-2)))
        config.head2toe.update(dict(target_size=32, fractions=(0.2,), steps=20))
        config.log_every = 5
    elif arg == "full":
        config.adapt.update(dict(num_steps=5_000, batch_size=128, lrs=(1e-3, 1e-2, 1e-1)))
        config.head2toe.update(dict(target_size=4096, fractions=(0.005, 0.02, 0.1), coefs=(1e-4, 1e-3),
                                    lrs=(0.01, 0.1), steps=2_000, folds=3))
    return config
