"""Depthwise convolution written for XLA:CPU: shifted multiply-adds forward, a cache-blocked kernel gradient.

XLA:CPU lowers a grouped convolution (feature_group_count = channels) to a slow generic loop; the same
arithmetic as k*k shifted elementwise products fuses into a few vectorised loops (MobileNetV2's train
step ~4x faster). Differentiated naively, though, the kernel gradient is k*k separate reductions, each
streaming the whole input and output gradient from memory: 57 ms of a 16x16x128 layer's backward pass at
batch 128. `depthwise_conv` computes that gradient over a few images at a time instead, so the k*k
reductions read data that sits in cache (13 ms).

The models call `modular.models.depthwise.depthwise_conv`, which runs this kernel only after `enable()`
(`modular.platform.tune_cpu()`) and only on CPU (`jax.lax.platform_dependent`): GPUs and TPUs, and the
library's default programs, use XLA's native grouped convolution.
"""
from __future__ import annotations

import functools
import math
import operator

import jax
import jax.numpy as jnp

from modular import settings
from modular.platform.fusion import fusion_boundary

CACHE_BYTES = 2.5e6  # input + output-gradient bytes per block of images in the kernel gradient


def enable(on: bool = True) -> None:
    """Use the shifted kernel on CPU in every model traced from now on (jit afresh to see the change)."""
    settings.configure(shifted_depthwise=bool(on))


def is_enabled() -> bool:
    return settings.current().shifted_depthwise


def _padded_taps(x, k: int, stride: int):
    """(padded x, window): window(a, i, j) is tap (i, j)'s strided view of padded a, one value per output."""
    p = k // 2
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    oh, ow = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    window = lambda a, i, j: a[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
    return xp, window


def _forward(x, kernel, stride: int):
    k = kernel.shape[0]
    xp, window = _padded_taps(x, k, stride)
    return functools.reduce(operator.add, [window(xp, i, j) * kernel[i, j] for i in range(k) for j in range(k)])


def _images_per_block(batch: int, bytes_per_image: int) -> int:
    """The largest divisor of `batch` whose images fit CACHE_BYTES (at least 1)."""
    fit = max(1, int(CACHE_BYTES // max(bytes_per_image, 1)))
    return max(d for d in range(1, min(batch, fit) + 1) if batch % d == 0)


def _batch_is_sharded(x) -> bool:
    """Whether x's batch axis is split over devices in its type (explicit sharding), where reshaping it fails."""
    typeof = getattr(jax, "typeof", None)
    spec = getattr(getattr(typeof(x), "sharding", None), "spec", None) if typeof else None
    return bool(spec) and spec[0] is not None


def _kernel_grad(x, g, k: int, stride: int):
    """d loss / d kernel (k, k, C), accumulated in float32 over blocks of images."""
    xp, window = _padded_taps(x, k, stride)
    if _batch_is_sharded(x):  # plain per-tap reductions: each device sums its own images
        taps = [jnp.sum(window(xp, i, j) * g, axis=(0, 1, 2), dtype=jnp.float32) for i in range(k) for j in range(k)]
        return jnp.stack(taps).reshape(k, k, x.shape[-1])
    n = x.shape[0]
    block = _images_per_block(n, (math.prod(xp.shape[1:]) + math.prod(g.shape[1:])) * x.dtype.itemsize)
    steps = n // block
    # Image b*steps + t is row b of step t; per-image partial sums meet in one reduction at the end.
    xs, gs = xp.reshape(block, steps, *xp.shape[1:]), g.reshape(block, steps, *g.shape[1:])

    def accumulate(t, acc):
        a = jax.lax.dynamic_index_in_dim(xs, t, axis=1, keepdims=False)
        d = jax.lax.dynamic_index_in_dim(gs, t, axis=1, keepdims=False)
        taps = [jnp.sum(window(a, i, j) * d, axis=(1, 2), dtype=jnp.float32) for i in range(k) for j in range(k)]
        return acc + jnp.stack(taps, axis=1)

    acc = jax.lax.fori_loop(0, steps, accumulate, jnp.zeros((block, k * k, x.shape[-1]), jnp.float32))
    return acc.sum(0).reshape(k, k, x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise(x, kernel, stride):
    return fusion_boundary(_forward(x, kernel, stride))


def _depthwise_fwd(x, kernel, stride):
    return _depthwise(x, kernel, stride), (x, kernel)


def _depthwise_bwd(stride, residuals, g):
    x, kernel = residuals
    g = fusion_boundary(g)  # read k*k times at shifted positions: compute the incoming gradient once
    dx = jax.vjp(lambda v: _forward(v, kernel, stride), x)[1](g)[0]
    return dx, _kernel_grad(x, g, kernel.shape[0], stride).astype(kernel.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv(x, kernel, stride: int = 1):
    """Depthwise conv of NHWC `x` with a (k, k, C) kernel, stride `stride`, zero padding k//2 each side."""
    return _depthwise(x, kernel, int(stride))
