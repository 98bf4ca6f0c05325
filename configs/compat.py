"""Compatible components (Gygli et al. 2020): Fig. 2 over seeds with its controls, then the applications.

  python -m experiments.run --config=configs/compat.py --workdir=/tmp/compat/cpu       # the study, 3 seeds
  python -m experiments.run --config=configs/compat.py:smoke --workdir=/tmp/c_smoke    # seconds (tests)
  python -m experiments.run --config=configs/compat.py --workdir=/tmp/c1 --config.seeds=1 \
      --config.compat.settings='("independent", "RP")' --config.compat.same_data='()' \
      --config.compat.dcc=False --config.compat.iiw=False  # a smaller study (its target, RP, among the settings)

The study trains `compat.settings` (the paper's 8 by default) jointly, the two networks' minibatches
alternating, plus the upper bound (`upper_bound`: each network its own RP head), a harder pretext
(`harder_rp`: rotation + mirror) and the same-data controls (`same_data`); follows recombination on
validation every num_steps/eval_points steps and chooses the step count there; trains the setting named by
compat.dcc/rp/iiw incrementally in both orders (`incremental_orders`) for that many steps, and the
pretrained-IIW settings (`pretrained_settings`, extractor pretrained on `pretrain_data`). num_steps counts
updates per network. The applications run on every seed (keys below).
"""
import ml_collections

from configs import common


def get_config(arg: str = ""):
    arg = common.check_arg(arg)
    config = common.base_config(arg, experiment="compat")
    # Two tasks of one shape (compat.common_classes None: every label id both have, all 10 digits here).
    config.data = ml_collections.ConfigDict(dict(task_a="mnist5k", task_b="digits", image_size=16, channels=1,
                                                 max_train=ml_collections.FieldReference(None, field_type=int),
                                                 val_fraction=0.2))
    config.model = common.model_config(depth=8, width=8, split="stage2")  # compat.split wins
    # The method's options (equal to the library's `compat.default_options()`, which tests/test_compat.py checks).
    config.compat = ml_collections.ConfigDict(dict(
        schedule="joint",                    # joint | incremental | incremental_ba
        split="stage2",                      # last extractor unit; the heads hold the rest + pool + classifier
        common_classes=ml_collections.FieldReference(None, field_type=list),  # None: every shared label id
        dcc_weight=1.0, rp_weight=1.0,
        rp_fraction=1.0,                     # rotate this share of each batch (the paper: every image)
    ))
    # The study (`compat.study`): its settings, controls, evaluation points and step choice.
    config.compat.update(dict(
        settings=("independent", "DCC", "RP", "IIW", "RP+DCC", "IIW+DCC", "IIW+RP", "IIW+RP+DCC"),
        rp_transforms="rot4",                # the main pretext (paper: rot4)
        harder_rp="dihedral8",               # '' to skip: RP alone with this pretext
        upper_bound=True,                    # RP with each network's own RP head
        same_data=("independent", "IIW"),    # App. C.3: b trains on a's task, these settings
        incremental_orders=("incremental", "incremental_ba"),  # for the chosen setting, at the chosen steps
        # Pretrained IIW: these settings (each with IIW) again, both extractors starting from one extractor
        # pretrained for `pretrain_steps` on `pretrain_data` ('' or () to skip).
        pretrained_settings=("IIW", "IIW+RP+DCC"),
        pretrain_data="mnist5k/invert",
        pretrain_steps=300,
        # With the 'fast_transfer' application: these settings trained incrementally (a with its RP head
        # first, then b against a's frozen heads) at the chosen steps, the pairs that application reuses.
        fast_transfer_settings=("RP", "IIW+RP"),
        eval_points=4,                       # validation evaluations along the run (evenly spaced)
        converge_tolerance=0.03,             # the step choice: curves move less than this afterwards
    ))
    config.compat.update(dict(
        dcc=True, rp=True, iiw=True,         # the setting whose metrics lead results.json
        # Applications (paper Sec. 5), each on every seed: 'uda' adapts a's extractor (chosen setting) to
        # unlabeled `uda_target` images through the frozen RP head and reuses a's frozen task head;
        # 'fast_transfer' recombines the study's RP-only incremental pairs (`fast_transfer_settings`: a with its
        # RP head, then b against it) and fine-tunes from there vs a re-initialised head, rates `transfer_lrs`
        # chosen on validation; 'cross_arch' trains a reference a and a `cross_arch_model` b on classes
        # 0..cross_arch_old_classes-1, then moves a new all-class head from frozen extractor a to b.
        applications=("uda", "fast_transfer", "cross_arch"),  # a tuple: --config.compat.applications='("uda",)'
        uda_target="mnist5k/edges",           # source classifier: ~27% here with stored BN stats
        uda_steps=150,
        uda_lr=1e-3,
        transfer_epochs=2,
        transfer_train="all",                # all (the paper fine-tunes the network) | head
        transfer_lrs=(1e-3, 3e-3),           # every start gets this grid, chosen on validation
        # 'cross_arch': b's architecture (its split must give a's feature stride); both extractors end in a
        # 1x1-conv adapter to `adapter_width` channels in front of the shared heads.
        cross_arch_model=ml_collections.ConfigDict(dict(name="wrn", depth=10, widen=2, width=8, split="stage2",
                                                        bn_momentum=0.9)),
        adapter_width=32,
        cross_arch_setting="RP+DCC",         # how b is made compatible (vs 'independent'); IIW = identical heads
        cross_arch_old_classes=5,
        cross_arch_steps=120,                # per network, b after a (0: num_steps)
        cross_arch_head_steps=60,            # the new head on frozen extractor a, and b's own (0: num_steps / 10)
    ))
    config.batch_size = 32                   # per network step
    config.num_steps = 300                   # updates per network (the two alternate)
    # Same data (App. C.3): the independent control, RP alone (does RP fail here because the tasks differ?) and
    # one combination of all three methods (the paper: any two or three recombine within 1.1% of own accuracy).
    # Pretrained IIW with the settings whose numbers the paper gives (Sec. 4: IIW 74.3%, IIW+DCC 82.7%), the
    # extractor pretrained by rotation prediction only.
    config.compat.update(dict(eval_points=3, same_data=("independent", "RP", "IIW+RP+DCC"), pretrain_steps=200,
                              pretrained_settings=("IIW", "IIW+DCC")))
    config.log_every = 100
    config.checkpoint_every = 0
    config.verbose = True
    if arg == "smoke":
        config.data.max_train = 256
        config.compat.update(dict(settings=("IIW+RP+DCC",), upper_bound=False, harder_rp="",
                                  same_data=("IIW+RP+DCC",), eval_points=2,
                                  incremental_orders=("incremental",)))  # one joint + one incremental group
        # cross_arch trains only its independent pair here (its compiles are the costly part of the smoke).
        config.compat.update(dict(uda_steps=3, transfer_epochs=1, transfer_lrs=(3e-3,), pretrain_steps=5,
                                  pretrained_settings=("IIW+RP+DCC",), fast_transfer_settings=("IIW+RP",),
                                  cross_arch_setting="independent", cross_arch_steps=3, cross_arch_head_steps=3))
        config.num_steps = 20
        config.log_every = 10
    elif arg == "full":
        config.data = ml_collections.ConfigDict(dict(task_a="tfds:cifar10", task_b="tfds:stl10", image_size=32,
                                                     channels=3, max_train=common.optional_int()))
        config.model = common.model_config(depth=56, width=16, split="stage2")   # Sec. 4: ResNet-56, split after stage 2
        config.compat.split = "stage2"
        config.batch_size = 512
        config.num_steps = 20_000
        config.log_every = 500
        config.checkpoint_every = 2_000
        # The paper's optimiser (App. E): Adam 0.01, weight decay 1e-7 (L2), batch 512, 20k steps, learning rate
        # divided by 10 every 5k steps (three decays, at 5k, 10k and 15k).
        config.optim = common.optim_config(name="adam", lr=0.01, weight_decay=1e-7, schedule="step",
                                           decay_at=(0.25, 0.5, 0.75), decay_factor=0.1)
        config.data.val_fraction = 0.1
        # UDA needs a target domain with cifar10's label space; none is wired offline. Pretrained IIW would
        # need an ImageNet-pretrained extractor of this shape; not wired, so skipped here.
        config.compat.applications = ("fast_transfer", "cross_arch")
        config.compat.update(dict(transfer_epochs=3, pretrain_data="", cross_arch_steps=0,  # 0: num_steps
                                  cross_arch_head_steps=0,                                 # 0: num_steps / 10
                                  cross_arch_model=ml_collections.ConfigDict(dict(
                                      name="wrn", depth=16, widen=4, width=16, split="stage2", bn_momentum=0.9)),
                                  adapter_width=64))
    return config
