"""Isometric networks, plain or with template mixtures (Zhmoginov, Sandler, Bashkirova).

An isometric net keeps one shape through all L residual blocks, so every block has the same parameter
shapes and a block's weights can be *generated* as a mixture of K shared templates:
    theta_{t,l} = sum_k softmax(xi_{t,l})_k * template_k.
The mixture for all layers is one einsum per batch, after which the blocks run as in a plain net.

Written as pure functions of an explicit parameter tree (rather than Linen modules) because the
tree's layout *is* the method: `shared/...` (templates, adapters, optionally BN) is reused across
tasks, `task{t}/...` (mixture logits `xi`, optional per-task BN = "linear patches", head) is private.
Moving BN statistics always live per task under `batch_stats/task{t}` and are never mixed.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular.models.depthwise import depthwise_conv
from modular.platform.fusion import fusion_boundary

BN_MODES = ("shared", "mixed", "per_task")
BN_EPS = 1e-5


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


def _bn_shapes(cfg) -> dict[str, tuple[int, ...]]:
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


def _bn_params(cfg, lead: int) -> dict:
    return {name: dict(scale=jnp.ones((lead, n)), bias=jnp.zeros((lead, n))) for name, n in _bn_shapes(cfg).items()}


def init(cfg, rng: jax.Array, in_channels: int, num_classes: Sequence[int]) -> tuple[dict, dict]:
    """(params, batch_stats) for len(num_classes) tasks."""
    num_tasks = len(num_classes)
    check_config(cfg, num_tasks)
    c, e, _ = _dims(cfg)
    L, K, s, d = int(cfg.depth), int(cfg.num_templates), int(cfg.stride), int(cfg.out_dim)
    r = jax.random.split(rng, 6 + num_tasks)
    he = lambda key, shape, fan: np.sqrt(2.0 / fan) * jax.random.normal(key, shape)
    shared: dict[str, Any] = dict(
        adapter_in=dict(kernel=he(r[0], (s, s, in_channels, c), s * s * in_channels), bias=jnp.zeros((c,))),
        adapter_out=dict(kernel1=he(r[1], (c, d), c), bias1=jnp.zeros((d,)),
                         kernel2=he(r[2], (d, d), d), bias2=jnp.zeros((d,))),
    )
    if K:
        bank = _init_weights(r[3], _block_shapes(cfg), K)
        if cfg.bn == "mixed":
            for name, n in _bn_shapes(cfg).items():
                bank[f"{name}_scale"], bank[f"{name}_bias"] = jnp.ones((K, n)), jnp.zeros((K, n))
        shared["templates"] = bank
    else:
        shared["layers"] = _init_weights(r[3], _block_shapes(cfg), L)
    if cfg.bn == "shared":
        shared["bn"] = _bn_params(cfg, L)
    params, stats = {"shared": shared}, {}
    for t, n in enumerate(num_classes):
        task: dict[str, Any] = dict(head=dict(kernel=0.01 * jax.random.normal(r[6 + t], (d, int(n))),
                                              bias=jnp.zeros((int(n),))))
        if K:
            task["mixture"] = cfg.mixture_init_std * jax.random.normal(jax.random.fold_in(r[4], t), (L, K))
        if cfg.bn == "per_task":
            task["bn"] = _bn_params(cfg, L)
        params[f"task{t}"] = task
        stats[f"task{t}"] = {name: dict(mean=jnp.zeros((L, n)), var=jnp.ones((L, n)))
                             for name, n in _bn_shapes(cfg).items()}
    return params, stats


def mixture_weights(params: Mapping, task: int, signature: Sequence[int] | None = None) -> jax.Array:
    """[L, K] mixture xi of a task: softmax of its logits, or a fixed one-hot signature if given."""
    logits = params[f"task{task}"]["mixture"]
    if signature is not None:
        return jax.nn.one_hot(jnp.asarray(signature), logits.shape[-1], dtype=logits.dtype)
    return jax.nn.softmax(logits, axis=-1)


def layer_weights(cfg, params: Mapping, task: int, signature: Sequence[int] | None = None) -> dict:
    """Every block's weights with a leading L axis: mixed from templates once per batch, or plain."""
    shared = params["shared"]
    if not cfg.num_templates:
        return dict(shared["layers"])
    xi = mixture_weights(params, task, signature)
    return {name: jnp.einsum("lk,k...->l...", xi, bank) for name, bank in shared["templates"].items()}


def _bn_affine(cfg, params: Mapping, weights: Mapping, task: int) -> dict:
    if cfg.bn == "mixed":
        return {name: dict(scale=weights[f"{name}_scale"], bias=weights[f"{name}_bias"]) for name in _bn_shapes(cfg)}
    return params["shared"]["bn"] if cfg.bn == "shared" else params[f"task{task}"]["bn"]


def _batch_norm(x, affine, stats, l, train: bool, momentum: float):
    """BN over batch and space; returns (y, (mean, var)) with the batch moments in train mode."""
    if train:
        mean, var = jnp.mean(x, axis=(0, 1, 2)), jnp.var(x, axis=(0, 1, 2))
    else:
        mean, var = stats["mean"][l], stats["var"][l]
    y = (x - mean) * jax.lax.rsqrt(var + BN_EPS) * affine["scale"][l] + affine["bias"][l]
    return y, (mean, var)


def apply(cfg, params: Mapping, batch_stats: Mapping, images: jax.Array, *, task: int = 0, train: bool = False,
          signature: Sequence[int] | None = None, weights: Mapping | None = None) -> tuple[jax.Array, dict, dict]:
    """(logits, out, new_batch_stats) of `task` on NHWC images.

    `out` holds 'features' (after the output adapter, before the head) and 'logits'. `weights` may be
    precomputed with `layer_weights` (the benchmark uses this to time generation separately).
    """
    s = int(cfg.stride)
    w_in = params["shared"]["adapter_in"]
    x = jax.lax.conv_general_dilated(images, w_in["kernel"], (s, s), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + w_in["bias"]
    w = weights if weights is not None else layer_weights(cfg, params, task, signature)
    affine = _bn_affine(cfg, params, w, task)
    stats = batch_stats[f"task{task}"]
    moments = {name: ([], []) for name in stats}
    act = jax.nn.hard_swish
    for l in range(int(cfg.depth)):  # fusion_boundary: each value and gradient computed once on CPU
        h = fusion_boundary(jnp.einsum("bhwc,ce->bhwe", x, w["expand"][l]) + w["expand_b"][l])
        h, m = _batch_norm(h, affine["bn1"], stats["bn1"], l, train, cfg.bn_momentum)
        moments["bn1"][0].append(m[0]); moments["bn1"][1].append(m[1])
        h = fusion_boundary(act(h))
        h = depthwise_conv(h, w["dw"][l]) + w["dw_b"][l]
        h, m = _batch_norm(h, affine["bn2"], stats["bn2"], l, train, cfg.bn_momentum)
        moments["bn2"][0].append(m[0]); moments["bn2"][1].append(m[1])
        h = fusion_boundary(act(h))
        if cfg.se:
            z = jax.nn.relu(jnp.mean(h, axis=(1, 2)) @ w["se_down"][l] + w["se_down_b"][l])
            h = h * jax.nn.hard_sigmoid(z @ w["se_up"][l] + w["se_up_b"][l])[:, None, None, :]
        h = fusion_boundary(jnp.einsum("bhwe,ec->bhwc", h, w["proj"][l]) + w["proj_b"][l])
        h, m = _batch_norm(h, affine["bn3"], stats["bn3"], l, train, cfg.bn_momentum)
        moments["bn3"][0].append(m[0]); moments["bn3"][1].append(m[1])
        x = fusion_boundary(x + h)
    w_out = params["shared"]["adapter_out"]
    f = act(jnp.einsum("bhwc,cd->bhwd", x, w_out["kernel1"]) + w_out["bias1"])
    f = jnp.mean(f, axis=(1, 2))
    f = act(f @ w_out["kernel2"] + w_out["bias2"])
    head = params[f"task{task}"]["head"]
    logits = f @ head["kernel"] + head["bias"]
    new_stats = dict(batch_stats)
    if train:
        mom = float(cfg.bn_momentum)
        new_stats[f"task{task}"] = {
            name: dict(mean=mom * stats[name]["mean"] + (1 - mom) * jnp.stack(moments[name][0]),
                       var=mom * stats[name]["var"] + (1 - mom) * jnp.stack(moments[name][1]))
            for name in stats}
    return logits, dict(features=f, logits=logits), new_stats


def one_hotness(xi: jax.Array) -> float:
    """Mean over layers of max_k xi_{l,k}: 1 for one-hot signatures, 1/K for uniform mixtures."""
    return float(jnp.mean(jnp.max(xi, axis=-1)))
