"""Compositional models: isometric networks whose blocks mix K shared templates (Zhmoginov et al.).

  python -m experiments.run --config=configs/templates.py --workdir=/tmp/templates          # CPU, ~10 min
  python -m experiments.run --config=configs/templates.py:smoke --workdir=/tmp/t_smoke      # seconds
  python -m experiments.run --config=configs/templates.py --workdir=/tmp/t_sig --config.mode=signatures

Modes: single | signatures | multitask (default) | transfer | adapt.
"""
from configs import common
from modular.models import isometric


def get_config(arg: str = ""):
    arg = common.check_arg(arg)
    config = common.base_config(arg, experiment="templates")
    config.mode = "multitask"
    # one digit task on several domains (paper Fig. 2 "one task, several domains")
    config.tasks = ["mnist5k", "mnist5k/rotate", "mnist5k/invert", "mnist5k/blur"]
    config.transfer_target = "mnist5k/shear"
    config.adapt_target = "mnist5k/shot_noise"
    config.transfer_inits = ["source", "random", "bn_logits"]
    config.transfer_steps = 200
    config.signature_kinds = ["learned", "sequential", "cyclic", "random"]
    config.model = isometric.default_config(width=16, expansion=2, depth=6, num_templates=3, stride=4)
    config.entropy_weight = 0.01
    config.clustering_weight = 0.0
    config.mixture_lr_mult = 3.0
    config.batch_size = 64          # per task
    config.num_steps = 300
    if arg == "smoke":
        config.tasks = ["mnist5k", "mnist5k/invert"]
        config.model = isometric.default_config(width=8, expansion=2, depth=3, num_templates=2, stride=4,
                                                out_dim=16, bn_momentum=0.8)
        config.signature_kinds = ["learned", "cyclic"]
        config.transfer_steps = 20
        config.batch_size = 32
        config.num_steps = 40
    elif arg == "full":
        config.model = isometric.default_config(width=64, expansion=4, depth=16, num_templates=8, stride=2,
                                                out_dim=256)
        config.batch_size = 128
        config.num_steps = 20_000
        config.transfer_steps = 5_000
    return config
