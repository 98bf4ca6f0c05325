"""A compatible pair as a model: its Flax modules and variables, RP's pretext transforms, and the losses
that are not the study's alternating step (that one lives with the training, `training.member_step`): a
network's task loss, adaptation through the frozen RP head, and rotation-only pretraining.

params (and BatchNorm statistics, same shape):
  {"shared": {"dcc": head, "rp": head}, "tasks": {"a": {"extractor", "head"}, "b": {"extractor", "head"}}}
so "freeze the auxiliary heads" is the rule `shared/.*` and "extractor of a + head of b" is two lookups.

RP's pretext: 'rot4' is the paper's rotation prediction (0/90/180/270 degrees). On upright digits it is nearly
solved from a few low-level cues (strokes run mostly vertically, digits are taller than wide), so a shared head
may constrain the features little. 'dihedral8' adds a horizontal mirror to each rotation (8 classes): telling a
digit from its mirror image needs its shape (a 2 from a mirrored 2), not a stroke direction, so the shared
head has to read features that carry class-level structure. Each image gets one transform drawn uniformly
(`draw_pretext`); `apply_pretext` rotates/mirrors a batch by per-image transform ids inside a jitted step.

The loss factories are memoised, so equal arguments give the same loss function object and
`train.train_subtrees` reuses its compiled step.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular import data, losses, models

TASKS = ("a", "b")
PRETEXTS = {"rot4": 4, "dihedral8": 8}   # RP's pretext kinds: how many transforms the shared head tells apart


@dataclasses.dataclass(frozen=True)
class CompatModules:
    """The modules of both networks; each network applies its extractor/head module to its own params.

    Hashable (frozen, Flax modules), so loss factories and jitted forwards can key on it."""
    extractor: Any
    task_head_a: Any
    task_head_b: Any
    dcc_head: Any
    rp_head: Any
    extractor_b: Any = None  # network b's own extractor (another architecture); None: b uses `extractor`

    def head(self, task: str):
        """The task head module of network `task` ('a' or 'b')."""
        return self.task_head_a if task == "a" else self.task_head_b

    def ext(self, task: str):
        """The extractor module of network `task` ('a' or 'b')."""
        return self.extractor_b if task == "b" and self.extractor_b is not None else self.extractor


class AdaptedExtractor(nn.Module):
    """An extractor followed by a 1x1-conv adapter to `features` channels, so that extractors of different
    architectures feed the same heads (params: {'extractor': ..., 'adapter': ...})."""
    extractor: Any
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        feats, out = self.extractor(x, train=train)
        y = nn.Conv(self.features, (1, 1), use_bias=True, dtype=feats.dtype, name="adapter")(feats)
        return y, dict(out, adapter=y)


def build_modules(model_cfg: ml_collections.ConfigDict, num_a: int, num_b: int, num_common: int, *,
                  model_b_cfg: ml_collections.ConfigDict | None = None, adapter_width: int | None = None
                  ) -> CompatModules:
    """The modules; with `model_b_cfg` network b gets an extractor of that architecture and both extractors
    end in a 1x1-conv adapter to `adapter_width` channels, so the heads (built from `model_cfg`) fit both."""
    ext_a, ext_b = models.build_extractor(model_cfg), None
    if model_b_cfg is not None:
        if not adapter_width or int(adapter_width) < 1:
            raise ValueError(f"Extractors of different architectures need a positive adapter width, "
                             f"got {adapter_width!r}.")
        ext_a = AdaptedExtractor(ext_a, int(adapter_width))
        ext_b = AdaptedExtractor(models.build_extractor(model_b_cfg), int(adapter_width))
    return CompatModules(extractor=ext_a,
                         task_head_a=models.build_head(model_cfg, num_a),
                         task_head_b=models.build_head(model_cfg, num_b),
                         dcc_head=models.build_head(model_cfg, num_common),
                         rp_head=models.build_head(model_cfg, 4),
                         extractor_b=ext_b)


def _init(module, key, shape):
    variables = models.init(module, key, shape)  # jitted and cached per module
    return variables["params"], variables.get("batch_stats", {})


def init_variables(mods: CompatModules, key: jax.Array, image_shape: tuple, *, identical_init: bool
                   ) -> tuple[dict, dict]:
    """(params, batch_stats) in the pair layout; IIW gives b exactly a's initial weights (with extractors of
    different architectures: the same initial heads)."""
    x_shape = (1,) + tuple(image_shape)
    keys = jax.random.split(key, 6)
    params, stats = {"shared": {}, "tasks": {}}, {"shared": {}, "tasks": {}}
    feats_shape = None
    for i, t in enumerate(TASKS):
        k_ext, k_head = (keys[0], keys[1]) if identical_init else (keys[2 * i], keys[2 * i + 1])
        e_p, e_s = _init(mods.ext(t), k_ext, x_shape)
        feats = jax.eval_shape(lambda p, s: mods.ext(t).apply({"params": p, "batch_stats": s},
                                                             jnp.zeros(x_shape), train=False)[0], e_p, e_s)
        if feats_shape is not None and feats.shape != feats_shape:
            raise ValueError(f"The extractors of a and b give features of shapes {feats_shape[1:]} and "
                             f"{feats.shape[1:]}; shared heads need one shape (pick splits at the same stride).")
        feats_shape = feats.shape
        h_p, h_s = _init(mods.head(t), k_head, feats_shape)
        params["tasks"][t], stats["tasks"][t] = {"extractor": e_p, "head": h_p}, {"extractor": e_s, "head": h_s}
    for name, module, k in (("dcc", mods.dcc_head, keys[4]), ("rp", mods.rp_head, keys[5])):
        params["shared"][name], stats["shared"][name] = _init(module, k, feats_shape)
    tasks = params["tasks"]
    if identical_init and mods.extractor_b is None and jax.tree.structure(tasks["a"]) != jax.tree.structure(tasks["b"]):
        raise ValueError("compat.iiw needs both task heads to have the same shape (same number of classes).")
    return params, stats


def run_module(module, params, stats, x, mode: str):
    """Apply one part with BatchNorm in `mode` ('train' | 'eval' | 'batch_stats'): (output, new stats)."""
    variables = {"params": params, "batch_stats": stats}
    if mode == "eval" or not jax.tree.leaves(stats):
        y, _ = module.apply(variables, x, train=mode != "eval" and bool(jax.tree.leaves(stats)))
        return y, stats
    (y, _), updated = module.apply(variables, x, train=True, mutable=["batch_stats"])
    return y, (stats if mode == "batch_stats" else updated["batch_stats"])


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def forward(extractor, head, mode: str, ext_params, ext_stats, head_params, head_stats, x):
    """Logits of `head` on `extractor`'s features, BatchNorm in `mode`; static in the modules, so every
    recombination of one pair compiles once per shape."""
    feats, _ = run_module(extractor, ext_params, ext_stats, x, mode)
    return run_module(head, head_params, head_stats, feats, mode)[0]


def even_chunks(n: int, batch_size: int) -> list[np.ndarray]:
    """Near-equal index chunks with no padding: padded zeros would corrupt batch-statistics BatchNorm."""
    return np.array_split(np.arange(n), max(1, -(-n // batch_size)))


# RP's pretext transforms.

def pretext_classes(kind: str) -> int:
    if kind not in PRETEXTS:
        raise ValueError(f"Unknown compat.rp_transforms {kind!r}; known: {', '.join(PRETEXTS)}.")
    return PRETEXTS[kind]


def draw_pretext(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """n transform ids, uniform over the kind's classes."""
    return rng.integers(0, pretext_classes(kind), n).astype(np.int32)


def apply_pretext(images, ids, kind: str):
    """Each image [B,H,W,C] transformed by its id: id % 4 quarter turns, then mirrored when id >= 4."""
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"Rotation prediction needs square images, got {images.shape[1]}x{images.shape[2]}.")
    variants = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
    if pretext_classes(kind) == 8:
        variants += [jnp.flip(v, axis=2) for v in variants]
    stacked = jnp.stack(variants)                                  # [K,B,H,W,C]
    onehot = (ids[None, :] == jnp.arange(len(variants))[:, None]).astype(images.dtype)
    return jnp.einsum("kb,kbhwc->bhwc", onehot, stacked)


# Losses.

def common_label_map(common: Sequence[int], num_classes: int) -> np.ndarray:
    """Task label -> DCC class index (position in `common`), or -1 for classes outside it."""
    table = np.full((num_classes,), -1, np.int32)
    for i, c in enumerate(common):
        table[int(c)] = i
    return table


def resolve_common_classes(common: Sequence[int] | None, num_a: int, num_b: int) -> list[int]:
    """The shared label ids: given explicitly, or every label id both tasks have."""
    if common is None:
        return list(range(min(num_a, num_b)))
    common = [int(c) for c in common]
    if not common or len(set(common)) != len(common) or any(not 0 <= c < min(num_a, num_b) for c in common):
        raise ValueError(f"compat.common_classes {common} must be distinct labels present in both tasks "
                         f"(0..{min(num_a, num_b) - 1}).")
    return common


@functools.lru_cache(maxsize=64)
def make_loss_fn(mods: CompatModules, tasks: tuple[str, ...]):
    """loss_fn(params, stats, batch, rng) over the pair trees: the sum of each task t's head cross-entropy on
    `batch[t]` ('image'/'label'); the rng is not read. It trains a head, or a whole network, on its own task
    (the head update, fast transfer); pairs train with DCC and RP through `training.member_step`."""
    def loss_fn(params, stats, batch, rng):
        del rng
        nets = params["tasks"]
        new_shared, new_nets = dict(stats["shared"]), dict(stats["tasks"])
        total, metrics = 0.0, {}
        for t in tasks:
            x, y = batch[t]["image"], batch[t]["label"]
            feats, new_ext = run_module(mods.ext(t), nets[t]["extractor"], stats["tasks"][t]["extractor"], x, "train")
            logits, new_head = run_module(mods.head(t), nets[t]["head"], stats["tasks"][t]["head"], feats, "train")
            new_nets[t] = {"extractor": new_ext, "head": new_head}
            task_loss = losses.cross_entropy(logits, y)
            total = total + task_loss
            metrics[f"loss_{t}"] = task_loss
            metrics[f"acc_{t}"] = losses.accuracy(logits, y)
        return total, ({"shared": new_shared, "tasks": new_nets}, metrics)

    return loss_fn


@functools.lru_cache(maxsize=8)
def make_rp_adaptation_loss(mods: CompatModules, task: str):
    """loss_fn(params, stats, batch, rng): RP cross-entropy of `task`'s extractor on rotated copies of the
    unlabeled images `batch[task]['image']`, through the shared RP head.

    The rotated pass normalises with its own batch statistics (as in the study's step) and the RP head's
    stored statistics are never touched; the extractor's running statistics are moved by a pass over the
    unrotated target images, so that stored-statistics evaluation sees the target domain.
    """
    def loss_fn(params, stats, batch, rng):
        del rng
        x = batch[task]["image"]
        ext_p, ext_s = params["tasks"][task]["extractor"], stats["tasks"][task]["extractor"]
        _, new_ext_s = run_module(mods.ext(task), ext_p, ext_s, x, "train")
        views, rot = data.rotation_views(x)
        feats, _ = run_module(mods.ext(task), ext_p, ext_s, views, "batch_stats")
        logits, _ = run_module(mods.rp_head, params["shared"]["rp"], stats["shared"]["rp"], feats, "batch_stats")
        loss = losses.cross_entropy(logits, rot)
        nets = dict(stats["tasks"], **{task: dict(stats["tasks"][task], extractor=new_ext_s)})
        return loss, ({"shared": stats["shared"], "tasks": nets},
                      {"rp_target": loss, "rp_acc_target": losses.accuracy(logits, rot)})

    return loss_fn


@functools.lru_cache(maxsize=16)
def make_rotation_loss(mods):
    """loss_fn(params, stats, batch, rng): the rotation cross-entropy of network a's extractor through the RP
    head on all four rotations of every image in `batch['a']['image']`; the labels are not read. One object
    per modules, so every seed's pretraining reuses one compiled step."""
    def loss_fn(params, stats, batch, rng_):
        del rng_
        views, rot = data.rotation_views(batch["a"]["image"])
        ext = params["tasks"]["a"]["extractor"]
        feats, ext_s = run_module(mods.ext("a"), ext, stats["tasks"]["a"]["extractor"], views, "train")
        logits, rp_s = run_module(mods.rp_head, params["shared"]["rp"], stats["shared"]["rp"], feats, "train")
        loss = losses.cross_entropy(logits, rot)
        new = {"shared": dict(stats["shared"], rp=rp_s),
               "tasks": dict(stats["tasks"], a=dict(stats["tasks"]["a"], extractor=ext_s))}
        return loss, (new, {"rp": loss, "rp_acc": losses.accuracy(logits, rot)})
    return loss_fn
