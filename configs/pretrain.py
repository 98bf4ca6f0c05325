"""Supervised backbone pretraining.

  python -m experiments.run --config=configs/pretrain.py --workdir=/tmp/pretrain        # CPU, ~1-2 min
  python -m experiments.run --config=configs/pretrain.py:smoke --workdir=/tmp/p_smoke   # seconds (tests)
  python -m experiments.run --config=configs/pretrain.py:full --workdir=gs://.../cifar10  # accelerators
  python -m experiments.run --config=configs/pretrain.py:full --workdir=gs://.../imagenet \
      --config.data.name=tfds:imagenet2012 --config.data.image_size=224 --config.batch_size=1024  # streams

A `tfds:` set over config.data.max_in_memory_gb in memory streams from disk (config.data.streaming).
"""
from configs import common


def get_config(arg: str = ""):
    config = common.base_config(arg, experiment="pretrain")
    for key, value in common.streaming_keys().items():
        if key not in config.data:
            config.data[key] = value
    return config
