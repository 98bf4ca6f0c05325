"""Compatible components (Gygli, Uijlings & Ferrari 2020): train two networks so that the extractor of
one works with the head of the other, then measure that by recombining them without fine-tuning.

All trained weights live in one tree `{'a': {'extractor','head'}, 'b': {...}, 'dcc': head, 'rp': head}`
(and the BatchNorm statistics in a tree of the same shape), so "freeze the auxiliary heads of a while
training b" is one optax mask rule and "extractor of a + head of b" is a dict lookup.

- DCC: `dcc`, a head shared by both tasks, trained on the classes the tasks have in common.
- RP: `rp`, a shared head predicting the rotation (0/90/180/270) of rotated copies of the input.
- IIW: both networks start from the same initial weights.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections
import numpy as np

from modular import losses, models
from modular.data import rotation_views

TASKS = ("a", "b")
SCHEDULES = ("joint", "incremental")


@dataclasses.dataclass(frozen=True)
class CompatModules:
    """The four Flax modules; each network's extractor/head reuse the same module with its own params."""
    extractor: Any
    task_head_a: Any
    task_head_b: Any
    dcc_head: Any
    rp_head: Any
    extractor_b: Any = None  # network b's own extractor (another architecture); None: b uses `extractor`

    def head(self, task: str):
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


def build_modules(model_cfg: ml_collections.ConfigDict, num_a: int, num_b: int, num_common: int, *,
                  model_b_cfg: ml_collections.ConfigDict | None = None, adapter_width: int | None = None
                  ) -> CompatModules:
    """The modules; with `model_b_cfg` network b gets an extractor of that architecture and both extractors
    end in a 1x1-conv adapter to `adapter_width` channels, so the heads (built from `model_cfg`) fit both."""
    ext_a, ext_b = models.build_extractor(model_cfg), None
    if model_b_cfg is not None:
        if not adapter_width or int(adapter_width) < 1:
            raise ValueError(f"Extractors of different architectures need a positive adapter width, got {adapter_width!r}.")
        ext_a = AdaptedExtractor(ext_a, int(adapter_width))
        ext_b = AdaptedExtractor(models.build_extractor(model_b_cfg), int(adapter_width))
    return CompatModules(extractor=ext_a,
                         task_head_a=models.build_head(model_cfg, num_a),
                         task_head_b=models.build_head(model_cfg, num_b),
                         dcc_head=models.build_head(model_cfg, num_common),
                         rp_head=models.build_head(model_cfg, 4),
                         extractor_b=ext_b)


def _init(module, rng, shape):
    variables = models.init(module, rng, shape)  # jitted and cached per module
    return variables["params"], variables.get("batch_stats", {})


def init_variables(mods: CompatModules, rng: jax.Array, image_shape: tuple, *, identical_init: bool) -> tuple[dict, dict]:
    """(params, batch_stats), both shaped {'a','b','dcc','rp'}; IIW gives b exactly a's initial weights
    (with extractors of different architectures: the same initial heads)."""
    x_shape = (1,) + tuple(image_shape)
    keys = jax.random.split(rng, 6)
    params, stats = {}, {}
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
        params[t], stats[t] = {"extractor": e_p, "head": h_p}, {"extractor": e_s, "head": h_s}
    for name, module, k in (("dcc", mods.dcc_head, keys[4]), ("rp", mods.rp_head, keys[5])):
        params[name], stats[name] = _init(module, k, feats_shape)
    if identical_init and mods.extractor_b is None and jax.tree.structure(params["a"]) != jax.tree.structure(params["b"]):
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


def make_loss_fn(mods: CompatModules, cfg: ml_collections.ConfigDict, label_map: np.ndarray,
                 tasks: Sequence[str]):
    """loss_fn(params, stats, batch, rng) for `train.fit`; `batch` holds image_<t>/label_<t> per task in `tasks`.

    Each task adds its head's cross-entropy, DCC's cross-entropy on its common-class examples and the RP
    cross-entropy on rotated copies of (the first quarter of) its batch. The rotated pass normalises
    with its own batch statistics but does not move the running ones, which stay those of real images.
    """
    label_map = jnp.asarray(label_map)
    use_dcc, use_rp = bool(cfg.dcc), bool(cfg.rp)
    w_dcc, w_rp = float(cfg.get("dcc_weight", 1.0)), float(cfg.get("rp_weight", 1.0))
    rp_fraction = float(cfg.get("rp_fraction", 0.25))

    def loss_fn(params, stats, batch, rng):
        del rng
        new_stats = dict(stats)
        total, metrics = 0.0, {}
        for t in tasks:
            x, y = batch[f"image_{t}"], batch[f"label_{t}"]
            feats, ext_stats = run_module(mods.ext(t), params[t]["extractor"], stats[t]["extractor"], x, "train")
            logits, head_stats = run_module(mods.head(t), params[t]["head"], stats[t]["head"], feats, "train")
            new_stats[t] = {"extractor": ext_stats, "head": head_stats}
            task_loss = losses.cross_entropy(logits, y)
            total = total + task_loss
            metrics[f"loss_{t}"] = task_loss
            metrics[f"acc_{t}"] = losses.accuracy(logits, y)
            if use_dcc:
                # A one-hot lookup, not a gather: gathers from a constant break on data-sharded labels.
                target = jnp.sum(jnp.where(y[:, None] == jnp.arange(label_map.shape[0]), label_map, 0), -1)
                mask = target >= 0
                dcc_logits, new_stats["dcc"] = run_module(mods.dcc_head, params["dcc"], new_stats["dcc"], feats, "train")
                dcc_loss = losses.cross_entropy(dcc_logits, jnp.maximum(target, 0), mask)
                total = total + w_dcc * dcc_loss
                metrics[f"dcc_{t}"] = dcc_loss
            if use_rp:
                n = max(1, int(round(x.shape[0] * rp_fraction)))
                views, rot = rotation_views(x[:n])
                r_feats, _ = run_module(mods.ext(t), params[t]["extractor"], stats[t]["extractor"], views,
                                        "batch_stats")
                rp_logits, new_stats["rp"] = run_module(mods.rp_head, params["rp"], new_stats["rp"], r_feats, "train")
                rp_loss = losses.cross_entropy(rp_logits, rot)
                total = total + w_rp * rp_loss
                metrics[f"rp_{t}"] = rp_loss
        return total, (new_stats, metrics)

    return loss_fn


def _even_chunks(n: int, batch_size: int) -> list[np.ndarray]:
    """Near-equal chunks with no padding: padded zeros would corrupt batch-statistics BatchNorm."""
    return np.array_split(np.arange(n), max(1, -(-n // batch_size)))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _recombined_forward(extractor, head, mode, ext_p, ext_s, head_p, head_s, x):
    # Module-level and static in the modules, so evaluating all 8 settings compiles once per shape.
    feats, _ = run_module(extractor, ext_p, ext_s, x, mode)
    return run_module(head, head_p, head_s, feats, mode)[0]


def recombined_logits(mods: CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                      images: np.ndarray, *, mode: str, batch_size: int = 256) -> np.ndarray:
    """Logits of extractor `extractor_of` followed by the task head of `head_of`, with no fine-tuning."""
    if mode not in ("eval", "batch_stats"):
        raise ValueError(f"Recombination BatchNorm mode must be 'eval' or 'batch_stats', got {mode!r}.")
    ext_p, ext_s = params[extractor_of]["extractor"], stats[extractor_of]["extractor"]
    head_p, head_s = params[head_of]["head"], stats[head_of]["head"]
    head = mods.head(head_of)
    return np.concatenate([np.asarray(_recombined_forward(mods.ext(extractor_of), head, mode, ext_p, ext_s, head_p, head_s,
                                                          images[idx]))
                           for idx in _even_chunks(len(images), batch_size)])


def recombination_accuracy(mods: CompatModules, params: Mapping, stats: Mapping, extractor_of: str, head_of: str,
                           images: np.ndarray, labels: np.ndarray, common: Sequence[int], *, mode: str) -> float:
    """Accuracy on the extractor's test images of the common classes, argmax over common classes only."""
    common = np.asarray(common)
    keep = np.isin(labels, common)
    if not keep.any():
        raise ValueError("No test example of the extractor's task belongs to the common classes.")
    logits = recombined_logits(mods, params, stats, extractor_of, head_of, images[keep], mode=mode)
    pred = common[np.argmax(logits[:, common], -1)]
    return float(np.mean(pred == labels[keep]))
