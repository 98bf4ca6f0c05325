"""Compatible components (Gygli et al. 2020): DCC / RP / IIW, recombination accuracy (Fig. 2).

  python -m experiments.run --config=configs/compat.py --workdir=/tmp/compat          # 8-way sweep, ~10 min CPU
  python -m experiments.run --config=configs/compat.py:smoke --workdir=/tmp/c_smoke   # seconds (tests)
  python -m experiments.run --config=configs/compat.py --workdir=/tmp/c1 --config.compat.sweep=False \
      --config.compat.schedule=incremental                                              # one setting

The default runs the sweep (all 8 DCC/RP/IIW combinations, joint schedule); the top-level metrics of
results.json are those of the setting named by compat.dcc/rp/iiw (all on by default). It then trains that
setting with the other schedule too (`schedules`) and runs the applications (`applications`: unsupervised
domain adaptation through the frozen RP head, faster transfer with a compatible head). Only those:
  python -m experiments.run --config=configs/compat.py --workdir=/tmp/compat_apps --config.compat.sweep=False
"""
import ml_collections

from configs import common
from modular.methods import compat


def get_config(arg: str = ""):
    arg = common.check_arg(arg)
    config = common.base_config(arg, experiment="compat")
    # Two tasks of one shape (compat.common_classes None: every label id both have, all 10 digits here).
    config.data = ml_collections.ConfigDict(dict(task_a="mnist5k", task_b="digits", image_size=16, channels=1,
                                                 max_train=ml_collections.FieldReference(None, field_type=int)))
    config.model = common.model_config(depth=8, width=16, split="stage2")  # compat.split wins
    config.compat = compat.default_options()  # schedule, split, DCC/RP loss weights, RP fraction
    config.compat.update(dict(
        dcc=True, rp=True, iiw=True,         # the setting whose metrics lead results.json
        sweep=True,                          # all 8 DCC/RP/IIW combinations
        compare_schedules=True,              # also train the chosen setting with the other schedule
        # Applications (paper Sec. 5) on the chosen setting's networks: 'uda' adapts a's extractor to
        # unlabeled `uda_target` images through the frozen RP head and reuses a's frozen task head;
        # 'fast_transfer' puts b's head on a's extractor (vs a re-initialised head), 0..transfer_epochs;
        # 'cross_arch' trains a pair whose extractors differ in architecture (see cross_arch_model).
        applications=("uda", "fast_transfer", "cross_arch"),  # a tuple, so --config.compat.applications='("uda",)' works
        uda_target="mnist5k/edges",           # source classifier: ~27% here with stored BN stats
        uda_steps=150,
        uda_lr=1e-3,
        transfer_epochs=1,
        transfer_train="head",               # head | all
        transfer_lr=3e-3,
        # 'cross_arch': network b gets this architecture (its split must give a's feature stride), both
        # extractors end in a 1x1-conv adapter to `adapter_width` channels in front of the shared heads.
        cross_arch_model=ml_collections.ConfigDict(dict(name="wrn", depth=10, widen=2, width=16, split="stage2",
                                                        bn_momentum=0.9)),
        adapter_width=32,
    ))
    config.batch_size = 64                   # per task
    config.num_steps = 300
    config.log_every = 100
    config.checkpoint_every = 0
    config.verbose = True
    if arg == "smoke":
        config.data.max_train = 256
        config.model.width = 8
        config.compat.sweep = False
        config.compat.compare_schedules = False
        config.compat.uda_steps = 3
        config.compat.applications = ("uda", "fast_transfer")  # cross_arch: covered by a unit test
        config.batch_size = 32
        config.num_steps = 30
        config.log_every = 10
    elif arg == "full":
        config.data = ml_collections.ConfigDict(dict(task_a="tfds:cifar10", task_b="tfds:stl10", image_size=32,
                                                     channels=3, max_train=None))
        config.model = common.model_config(depth=20, width=16, split="stage3")
        config.batch_size = 128
        config.num_steps = 20_000
        config.log_every = 500
        config.checkpoint_every = 2_000
        # UDA needs a target domain with cifar10's label space; none is wired offline, so only transfer.
        config.compat.applications = ("fast_transfer",)
        config.compat.transfer_epochs = 3
    return config
