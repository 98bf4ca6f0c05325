"""Pieces every config shares: data, model, optimizer and loop defaults at the three scales.

`arg`: 'smoke' (seconds, for tests), '' (CPU-scale reproduction, minutes) or 'full' (paper scale,
tfds datasets, accelerators).
"""
import ml_collections

from modular import models, optim

SCALES = ("", "smoke", "full")


def check_arg(arg: str) -> str:
    arg = (arg or "").strip()
    if arg not in SCALES:
        raise ValueError(f"Unknown config argument {arg!r}; known: '' (CPU default), 'smoke', 'full'.")
    return arg


def optional_int(value=None) -> ml_collections.FieldReference:
    """An int key that may be None (e.g. max_train: None = all) and stays overridable from the command line."""
    return ml_collections.FieldReference(value, field_type=int)


def model_config(name: str = "resnet", **overrides) -> ml_collections.ConfigDict:
    # dtype: activations and matmuls (float32 | bfloat16); parameters, optimizer state, BN statistics and
    # logits stay float32. init: weights to start from (modular.pretrained: a torchvision .pth, a big_vision
    # .npz, this library's .msgpack or checkpoint folder); the source pretraining is then skipped.
    # input_norm: '' (images in [0, 1]), 'imagenet' (torchvision's weights) or 'symmetric' (big_vision's).
    # The experiments' backbone is a ResNet-8 cut after stage3 (depth, widen and split below are that choice);
    # the architecture defaults (width, BN momentum, dtype, input normalisation) are the library's own,
    # modular.models.default_config, so the two cannot drift apart.
    arch = models.default_config(name)
    cfg = dict(name=name, depth=8, width=arch.width, widen=1, split="stage3", bn_momentum=arch.bn_momentum,
               dtype=arch.dtype, init="", input_norm=arch.input_norm)
    # ViT keys, unset (None: the architecture's default) but settable from the command line, e.g.
    # --config.model.name=vit --config.model.heads=12 --config.model.pool=tok.
    for key, kind in (("patch", int), ("heads", int), ("mlp_ratio", int), ("pool", str)):
        cfg[key] = ml_collections.FieldReference(None, field_type=kind)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def optim_config(**overrides) -> ml_collections.ConfigDict:
    # The library's one optimizer default (modular.optim.default_config): adam, lr 3e-3, cosine schedule, no
    # warmup, weight decay or clipping, momentum 0.9 (sgd), no per-subtree multipliers; `overrides` change keys.
    cfg = optim.default_config()
    cfg.update(overrides)
    return cfg


def streaming_keys() -> dict:
    """config.data keys of the streaming input path (modular/data/streaming.py), used by supervised pretraining."""
    return dict(streaming="auto",       # 'auto': stream a tfds set over max_in_memory_gb in memory; True; False
                max_in_memory_gb=4.0, shuffle_buffer=10_000)


def base_config(arg: str, *, experiment: str) -> ml_collections.ConfigDict:
    arg = check_arg(arg)
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    c.scale = arg or "cpu"
    c.seed = 0
    c.seeds = 3                  # headline numbers: mean +- standard error over this many seeds (or a list)
    c.data = ml_collections.ConfigDict(dict(name="mnist5k", image_size=16, channels=1, max_train=optional_int(),
                                            val_fraction=0.2))   # choices are made on this much of train
    c.model = model_config()
    c.optim = optim_config()
    c.batch_size = 128
    c.num_steps = 600
    c.log_every = 100
    c.checkpoint_every = 200
    c.resume_changed = False     # True: continue a workdir's run with a changed config (changes go to results.json)
    c.compilation_cache = ""     # compiled programs kept across runs: '' per-user folder, a folder, or 'off'
    c.divergence_factor = 100.0  # stop (before saving) when the loss exceeds this multiple of its median; 0: off
    if arg == "smoke":
        c.seeds = 1
        c.data.max_train = 512
        c.model.width = 8
        c.optim.lr = 1e-2
        c.batch_size = 32
        c.num_steps = 60
        c.log_every = 20
        c.checkpoint_every = 20
    elif arg == "full":
        c.data = ml_collections.ConfigDict(dict(name="tfds:cifar10", image_size=32, channels=3, max_train=optional_int(),
                                                val_fraction=0.1, **streaming_keys()))
        c.model = model_config(depth=20, width=16)
        c.optim = optim_config(name="momentum", lr=0.1, schedule="warmup_cosine", warmup_steps=500,
                               weight_decay=5e-4)
        c.num_steps = 64_000
        c.log_every = 500
        c.checkpoint_every = 2_000
    return c
