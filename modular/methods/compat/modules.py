"""The Flax modules of a compatible pair and their variables in the library's multi-task layout.

params (and BatchNorm statistics, same shape):
  {"shared": {"dcc": head, "rp": head}, "tasks": {"a": {"extractor", "head"}, "b": {"extractor", "head"}}}
so "freeze the auxiliary heads" is the rule `shared/.*` and "extractor of a + head of b" is two lookups.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular import models

TASKS = ("a", "b")
AUX_HEADS = ("dcc", "rp")


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
