"""Isometric networks, plain or with template mixtures (Zhmoginov, Sandler, Bashkirova).

An isometric net keeps one shape through all L residual blocks, so every block has the same parameter
shapes and a block's weights can be *generated* as a mixture of K shared templates:
    theta_{t,l} = sum_k softmax(xi_{t,l})_k * template_k.
The mixture for all layers is one einsum per batch, after which the blocks run as in a plain net.

Two front ends share the block code:
- pure functions of an explicit multi-task tree, the library's layout `{"shared": {...}, "tasks": {name:
  {...}}}`: `shared` holds templates (or plain layers), adapters and optionally BN, each task its mixture
  logits xi, optional BN affine ("linear patches") and head. Moving BN statistics always live per task,
  `{"tasks": {name: {bn1, bn2, bn3}}}`, and are never mixed;
- `Isometric`, one task's network as a `models.build` architecture (`SplitModel`: extractor = input
  adapter + blocks + the output adapter's 1x1 conv, head = pool + classifier), so every method can run on it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular.models import layers
from modular.models.depthwise import depthwise_conv
from modular.platform.fusion import fusion_boundary

BN_MODES = ("shared", "mixed", "per_task")
BN_EPS = 1e-5
UNITS = ("blocks",)   # models.build's only split point: the trunk is one unit, the head pools and classifies


def default_config(**overrides) -> ml_collections.ConfigDict:
    cfg = dict(
        width=16,            # channels C inside the isometric trunk (times width_mult)
        width_mult=1.0,      # rho
        expansion=2,         # E = expansion * C inside a block
        depth=6,             # L blocks
        stride=4,            # input adapter: conv with kernel = stride = this
        num_templates=3,     # K; 0 = plain isometric net (every layer owns its weights)
        se=True,             # squeeze-and-excite in each block
        se_ratio=4,
        bn="per_task",       # shared | mixed (gamma/beta mixed from templates) | per_task ("linear patches")
        out_dim=32,          # output adapter width
        bn_momentum=0.9,
        mixture_init_std=0.1,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def trunk_width(cfg) -> int:
    """Channels C of the blocks' output (the 'trunk' entry of `apply`'s out)."""
    return _dims(cfg)[0]


def task_name(index: int) -> str:
    """The name of the index-th task of a tree built by `init` from a list of class counts."""
    return f"task{index}"


def _dims(cfg) -> tuple[int, int, int]:
    c = max(1, int(round(cfg.width * cfg.width_mult)))
    e = c * int(cfg.expansion)
    return c, e, max(1, e // int(cfg.se_ratio))


def check_config(cfg, num_tasks: int) -> None:
    if cfg.bn not in BN_MODES:
        raise ValueError(f"Unknown BN mode {cfg.bn!r}; known: {', '.join(BN_MODES)}.")
    if cfg.depth < 1 or cfg.num_templates < 0 or num_tasks < 1:
        raise ValueError(f"Need depth >= 1, num_templates >= 0 and >= 1 task, got depth={cfg.depth}, "
                         f"num_templates={cfg.num_templates}, tasks={num_tasks}.")
    if cfg.bn == "mixed" and not cfg.num_templates:
        raise ValueError("BN mode 'mixed' needs templates (num_templates > 0).")


def _block_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every weight one block needs; a template (or a plain layer) holds exactly these."""
    c, e, s = _dims(cfg)
    shapes = dict(expand=(c, e), expand_b=(e,), dw=(3, 3, e), dw_b=(e,), proj=(e, c), proj_b=(c,))
    if cfg.se:
        shapes.update(se_down=(e, s), se_down_b=(s,), se_up=(s, e), se_up_b=(e,))
    return shapes


def _bn_shapes(cfg) -> dict[str, int]:
    c, e, _ = _dims(cfg)
    return dict(bn1=e, bn2=e, bn3=c)


def _init_weights(rng, shapes: Mapping[str, tuple[int, ...]], lead: int) -> dict:
    """He-normal kernels, zero biases, with a leading axis (K templates or L plain layers)."""
    out = {}
    for i, (name, shape) in enumerate(sorted(shapes.items())):
        if name.endswith("_b"):
            out[name] = jnp.zeros((lead,) + shape)
        else:
            fan_in = int(np.prod(shape[:-1]))
            std = np.sqrt(2.0 / fan_in) * (0.1 if name == "proj" else 1.0)  # small residual branch at init
            out[name] = std * jax.random.normal(jax.random.fold_in(rng, i), (lead,) + shape)
    return out


def _he(key, shape, fan_in: int):
    return np.sqrt(2.0 / fan_in) * jax.random.normal(key, shape)


def _init_adapter_in(cfg, key, in_channels: int) -> dict:
    s, (c, _, _) = int(cfg.stride), _dims(cfg)
    return dict(kernel=_he(key, (s, s, in_channels, c), s * s * in_channels), bias=jnp.zeros((c,)))


def _block_kind(cfg) -> str:
    """Where the blocks' weights live: 'templates' (K mixed per task) or 'layers' (L plain layers)."""
    return "templates" if cfg.num_templates else "layers"


def _init_block_weights(cfg, key) -> dict:
    """The K-template bank (with the BN affine when cfg.bn == 'mixed'), or the L plain layers."""
    K = int(cfg.num_templates)
    if not K:
        return _init_weights(key, _block_shapes(cfg), int(cfg.depth))
    bank = _init_weights(key, _block_shapes(cfg), K)
    if cfg.bn == "mixed":
        for name, n in _bn_shapes(cfg).items():
            bank[f"{name}_scale"], bank[f"{name}_bias"] = jnp.ones((K, n)), jnp.zeros((K, n))
    return bank


def _bn_params(cfg, lead: int) -> dict:
    return {name: dict(scale=jnp.ones((lead, n)), bias=jnp.zeros((lead, n))) for name, n in _bn_shapes(cfg).items()}


def _bn_stats(cfg) -> dict:
    L = int(cfg.depth)
    return {name: dict(mean=jnp.zeros((L, n)), var=jnp.ones((L, n))) for name, n in _bn_shapes(cfg).items()}


def init(cfg, rng: jax.Array, in_channels: int, num_classes: Sequence[int]) -> tuple[dict, dict]:
    """(params, batch_stats) for tasks `task_name(i)` with num_classes[i] classes."""
    num_tasks = len(num_classes)
    check_config(cfg, num_tasks)
    L, K, d = int(cfg.depth), int(cfg.num_templates), int(cfg.out_dim)
    c = _dims(cfg)[0]
    r = jax.random.split(rng, 6 + num_tasks)
    shared: dict[str, Any] = dict(
        adapter_in=_init_adapter_in(cfg, r[0], in_channels),
        adapter_out=dict(kernel1=_he(r[1], (c, d), c), bias1=jnp.zeros((d,)),
                         kernel2=_he(r[2], (d, d), d), bias2=jnp.zeros((d,))),
    )
    shared[_block_kind(cfg)] = _init_block_weights(cfg, r[3])
    if cfg.bn == "shared":
        shared["bn"] = _bn_params(cfg, L)
    tasks, stats = {}, {}
    for t, n in enumerate(num_classes):
        task: dict[str, Any] = dict(head=dict(kernel=0.01 * jax.random.normal(r[6 + t], (d, int(n))),
                                              bias=jnp.zeros((int(n),))))
        if K:
            task["mixture"] = cfg.mixture_init_std * jax.random.normal(jax.random.fold_in(r[4], t), (L, K))
        if cfg.bn == "per_task":
            task["bn"] = _bn_params(cfg, L)
        tasks[task_name(t)], stats[task_name(t)] = task, _bn_stats(cfg)
    return {"shared": shared, "tasks": tasks}, {"tasks": stats}


def mixture_weights(params: Mapping, task: str, signature: Sequence[int] | None = None) -> jax.Array:
    """[L, K] mixture xi of a task: softmax of its logits, or a fixed one-hot signature if given."""
    logits = params["tasks"][task]["mixture"]
    if signature is not None:
        return jax.nn.one_hot(jnp.asarray(signature), logits.shape[-1], dtype=logits.dtype)
    return jax.nn.softmax(logits, axis=-1)


def _mix(bank: Mapping, xi: jax.Array) -> dict:
    return {name: jnp.einsum("lk,k...->l...", xi, w) for name, w in bank.items()}


def layer_weights(cfg, params: Mapping, task: str, signature: Sequence[int] | None = None) -> dict:
    """Every block's weights with a leading L axis: mixed from templates once per batch, or plain."""
    shared = params["shared"]
    if not cfg.num_templates:
        return dict(shared["layers"])
    return _mix(shared["templates"], mixture_weights(params, task, signature))


def _mixed_bn_affine(cfg, weights: Mapping) -> dict:
    return {name: dict(scale=weights[f"{name}_scale"], bias=weights[f"{name}_bias"]) for name in _bn_shapes(cfg)}


def _bn_affine(cfg, params: Mapping, weights: Mapping, task: str) -> dict:
    if cfg.bn == "mixed":
        return _mixed_bn_affine(cfg, weights)
    return params["shared"]["bn"] if cfg.bn == "shared" else params["tasks"][task]["bn"]


def _batch_norm(x, affine, stats, l, train: bool):
    """BN over batch and space; returns (y, (mean, var)) with the batch moments in train mode. Moments and
    normalisation in float32 whatever x's dtype (bfloat16 statistics drift); y in x's dtype."""
    x32 = x.astype(jnp.float32)
    if train:
        mean, var = jnp.mean(x32, axis=(0, 1, 2)), jnp.var(x32, axis=(0, 1, 2))
    else:
        mean, var = stats["mean"][l], stats["var"][l]
    y = (x32 - mean) * jax.lax.rsqrt(var + BN_EPS) * affine["scale"][l] + affine["bias"][l]
    return y.astype(x.dtype), (mean, var)


def _adapter_in(images, w_in: Mapping, stride: int):
    return jax.lax.conv_general_dilated(images, w_in["kernel"], (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + w_in["bias"]


def _blocks(cfg, x, w: Mapping, affine: Mapping, stats: Mapping, train: bool):
    """x through the L blocks: (output, [each block's output], {bn name: (means [L, n], vars [L, n])})."""
    moments = {name: ([], []) for name in stats}
    outputs = []
    act = jax.nn.hard_swish
    for l in range(int(cfg.depth)):  # fusion_boundary: each value and gradient computed once on CPU
        h = fusion_boundary(jnp.einsum("bhwc,ce->bhwe", x, w["expand"][l]) + w["expand_b"][l])
        h, m = _batch_norm(h, affine["bn1"], stats["bn1"], l, train)
        moments["bn1"][0].append(m[0]); moments["bn1"][1].append(m[1])
        h = fusion_boundary(act(h))
        h = depthwise_conv(h, w["dw"][l]) + w["dw_b"][l]
        h, m = _batch_norm(h, affine["bn2"], stats["bn2"], l, train)
        moments["bn2"][0].append(m[0]); moments["bn2"][1].append(m[1])
        h = fusion_boundary(act(h))
        if cfg.se:
            z = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ w["se_down"][l] + w["se_down_b"][l])
            h = h * jax.nn.hard_sigmoid(z @ w["se_up"][l] + w["se_up_b"][l])[:, None, None, :]
        h = fusion_boundary(jnp.einsum("bhwe,ec->bhwc", h, w["proj"][l]) + w["proj_b"][l])
        h, m = _batch_norm(h, affine["bn3"], stats["bn3"], l, train)
        moments["bn3"][0].append(m[0]); moments["bn3"][1].append(m[1])
        x = fusion_boundary(x + h)
        outputs.append(x)
    return x, outputs, {name: (jnp.stack(means), jnp.stack(vars_)) for name, (means, vars_) in moments.items()}


def _moving_stats(stats: Mapping, moments: Mapping, momentum: float) -> dict:
    return {name: dict(mean=momentum * stats[name]["mean"] + (1 - momentum) * moments[name][0],
                       var=momentum * stats[name]["var"] + (1 - momentum) * moments[name][1]) for name in stats}


def apply(cfg, params: Mapping, batch_stats: Mapping, images: jax.Array, *, task: str = "task0", train: bool = False,
          signature: Sequence[int] | None = None) -> tuple[jax.Array, dict, dict]:
    """(logits, out, new_batch_stats) of `task` on NHWC images; `out` holds 'trunk' (the last block's NHWC
    output, before the output adapter), 'features' (after the output adapter, before the head) and
    'logits'. In train mode BN uses batch moments and updates the task's moving statistics."""
    x = _adapter_in(images, params["shared"]["adapter_in"], int(cfg.stride))
    w = layer_weights(cfg, params, task, signature)
    stats = batch_stats["tasks"][task]
    x, _, moments = _blocks(cfg, x, w, _bn_affine(cfg, params, w, task), stats, train)
    trunk = x
    act = jax.nn.hard_swish
    w_out = params["shared"]["adapter_out"]
    f = act(jnp.einsum("bhwc,cd->bhwd", x, w_out["kernel1"]) + w_out["bias1"])
    f = jnp.mean(f, axis=(1, 2))
    f = act(f @ w_out["kernel2"] + w_out["bias2"])
    head = params["tasks"][task]["head"]
    logits = f @ head["kernel"] + head["bias"]
    new_stats = batch_stats
    if train:
        new_stats = dict(batch_stats, tasks=dict(batch_stats["tasks"], **{
            task: _moving_stats(stats, moments, float(cfg.bn_momentum))}))
    return logits, dict(trunk=trunk, features=f, logits=logits), new_stats


def one_hotness(xi: jax.Array) -> float:
    """Mean over layers of max_k xi_{l,k}: 1 for one-hot signatures, 1/K for uniform mixtures."""
    return float(jnp.mean(jnp.max(xi, axis=-1)))


class Isometric(nn.Module):
    """One task's isometric network for `models.build`, with the same blocks as `apply`.

    Unit 'blocks' (the extractor): input adapter, the L blocks (weights mixed from the `templates` by this
    network's own `mixture` logits, or plain `layers`), then the output adapter's 1x1 conv + hard-swish.
    BN affine lives under `bn1`/`bn2`/`bn3` (stacked over layers; inside the templates in 'mixed' mode),
    running statistics under the same names in `batch_stats`. With `num_classes` it pools and classifies.
    """
    units: Sequence[str]
    num_classes: Optional[int] = None
    dtype: Any = jnp.float32
    # the fields of default_config(), in its order
    width: int = 16
    width_mult: float = 1.0
    expansion: int = 2
    depth: int = 6
    stride: int = 4
    num_templates: int = 3
    se: bool = True
    se_ratio: int = 4
    bn: str = "per_task"
    out_dim: int = 32
    bn_momentum: float = 0.9
    mixture_init_std: float = 0.1

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        if "blocks" in self.units:
            cast = lambda tree: jax.tree.map(lambda v: jnp.asarray(v, self.dtype), tree)
            L, in_channels = int(self.depth), x.shape[-1]
            w_in = self.param("adapter_in", lambda key: _init_adapter_in(self, key, in_channels))
            x = out["adapter_in"] = _adapter_in(x.astype(self.dtype), cast(w_in), int(self.stride))
            w = cast(self.param(_block_kind(self), lambda key: _init_block_weights(self, key)))
            if self.num_templates:
                logits = self.param("mixture", lambda key: self.mixture_init_std * jax.random.normal(
                    key, (L, int(self.num_templates))))
                w = _mix(w, cast(jax.nn.softmax(logits, axis=-1)))
            if self.bn == "mixed":
                affine = _mixed_bn_affine(self, w)
            else:  # one task: 'shared' and 'per_task' BN are the same thing
                affine = {name: cast(self.param(name, lambda key, name=name: _bn_params(self, L)[name]))
                          for name in _bn_shapes(self)}
            stats = {name: self.variable("batch_stats", name, lambda v=v: v) for name, v in _bn_stats(self).items()}
            stored = {name: v.value for name, v in stats.items()}
            x, outputs, moments = _blocks(self, x, w, affine, stored, train)
            out.update({f"block{l}": y for l, y in enumerate(outputs)})
            if train and not self.is_initializing():
                for name, value in _moving_stats(stored, moments, float(self.bn_momentum)).items():
                    stats[name].value = value
            c, d = _dims(self)[0], int(self.out_dim)
            w_out = cast(self.param("adapter_out", lambda key: dict(kernel=_he(key, (c, d), c), bias=jnp.zeros((d,)))))
            x = out["adapter_out"] = jax.nn.hard_swish(jnp.einsum("bhwc,cd->bhwd", x, w_out["kernel"]) + w_out["bias"])
        return layers.finish(x, out, self.num_classes, self.dtype)
