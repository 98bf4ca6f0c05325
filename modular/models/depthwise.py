"""Depthwise convolution for every model: XLA's grouped convolution, or on CPU hosts tuned by
`modular.platform.tune_cpu()` the shifted multiply-add kernel of `modular.platform.depthwise`."""
from __future__ import annotations

import jax

from modular.platform import depthwise as cpu_kernel


def grouped_conv(x, kernel, stride: int = 1):
    """XLA's native depthwise convolution (feature_group_count = channels), zero padding k//2 each side."""
    p = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def depthwise_conv(x, kernel, stride: int = 1):
    """Depthwise conv of NHWC `x` with a (k, k, C) kernel, stride `stride`, zero padding k//2 each side."""
    if kernel.ndim != 3 or kernel.shape[0] != kernel.shape[1] or kernel.shape[-1] != x.shape[-1]:
        raise ValueError(f"A depthwise kernel is (k, k, channels={x.shape[-1]}); got shape {kernel.shape}.")
    stride = int(stride)
    if not cpu_kernel.is_enabled():
        return grouped_conv(x, kernel, stride)
    return jax.lax.platform_dependent(x, kernel, cpu=lambda a, k: cpu_kernel.depthwise_conv(a, k, stride),
                                      default=lambda a, k: grouped_conv(a, k, stride))
