"""Supervised backbone pretraining.

  python -m experiments.run --config=configs/pretrain.py --workdir=/tmp/pretrain        # CPU, ~1-2 min
  python -m experiments.run --config=configs/pretrain.py:smoke --workdir=/tmp/p_smoke   # seconds (tests)
  python -m experiments.run --config=configs/pretrain.py:full --workdir=gs://.../cifar10  # accelerators
"""
from configs import common


def get_config(arg: str = ""):
    config = common.base_config(arg, experiment="pretrain")
    return config
