"""Building blocks shared by every architecture: conv/BN factories, stems, stages, the classifier.

Naming is part of the contract: convolutions are `conv*` / `*_conv`, batch norms `bn*`, so regex rules
such as `.*/bn[^/]*/(scale|bias)` select the same kind of parameter in every architecture.
"""
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from modular.models.depthwise import depthwise_conv
from modular.platform.fusion import fusion_boundary

# He et al. (2015) init on fan-out: the usual choice for ReLU conv nets.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ACTIVATIONS = {"relu": nn.relu, "relu6": nn.relu6, None: lambda x: x}


class Block(nn.Module):
    """Fields every residual block shares (blocks subclass it and add their own)."""
    features: int
    stride: int = 1
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32


class UnitRun(nn.Module):
    """Fields every architecture's run of units shares: an extractor (`num_classes` None) or a head."""
    units: Sequence[str] = ()
    width: int = 16
    num_classes: Optional[int] = None
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32


class DepthwiseConv(nn.Module):
    """`depthwise_conv` with nn.Conv's parameter name and (k, k, 1, C) kernel shape, so checkpoints and
    parameter rules are those of a grouped nn.Conv."""
    features: int
    kernel_size: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k, s, c = self.kernel_size, self.stride, x.shape[-1]
        if c != self.features:
            raise ValueError(f"A depthwise conv keeps its channels: got {c} inputs for {self.features} outputs.")
        w = self.param("kernel", conv_init, (k, k, 1, c), jnp.float32).astype(self.dtype)
        return depthwise_conv(x.astype(self.dtype), w[:, :, 0, :], s)


def conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1, dtype: Any = jnp.float32,
         name: str) -> nn.Module:
    """Bias-free conv with symmetric padding k//2, as in the papers (XLA's SAME pads stride-2 asymmetrically).

    A depthwise conv (groups == features) is a DepthwiseConv (see modular.models.depthwise).
    """
    if groups > 1 and groups == features:
        return DepthwiseConv(features, kernel, stride, dtype=dtype, name=name)
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   feature_group_count=groups, use_bias=False, kernel_init=conv_init, dtype=dtype, name=name)


def batch_norm(train: bool, momentum: float, dtype: Any, name: str) -> nn.BatchNorm:
    """BatchNorm on batch statistics when `train`, on running averages otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=1e-5, dtype=dtype, name=name)


class ConvBN(nn.Module):
    """conv -> optional BN -> activation: the stem and final 1x1 unit of every architecture.

    A normalised output passes a fusion boundary: it feeds convolutions, whose weight-gradient transposes
    would otherwise recompute the BN from the conv output (modular.platform.fusion).
    """
    features: int
    kernel: int = 3
    stride: int = 1
    norm: bool = True
    act: Optional[str] = "relu"
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = conv(self.features, self.kernel, self.stride, dtype=self.dtype, name="conv")(x)
        if self.norm:
            return fusion_boundary(ACTIVATIONS[self.act](batch_norm(train, self.bn_momentum, self.dtype, "bn")(x)))
        return ACTIVATIONS[self.act](x)


class Stage(nn.Module):
    """`num_blocks` blocks named block0, block1, ...; only the first one strides.

    `block` is a module constructor (a functools.partial of a block class) taking `stride` and `name`;
    every block returns `(y, out)`. Activations are reported as `block{i}/<name>`, block outputs as
    `block{i}`. `closing_act` adds a final `bn_final` + activation, which a pre-activation network
    needs before pooling; keeping it inside the stage keeps the unit list the same for every variant.
    """
    block: Callable[..., nn.Module]
    num_blocks: int
    stride: int = 1
    closing_act: Optional[str] = None
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        for i in range(self.num_blocks):
            x, inner = self.block(stride=self.stride if i == 0 else 1, name=f"block{i}")(x, train=train)
            add_prefixed(out, f"block{i}", inner)
            out[f"block{i}"] = x
        if self.closing_act is not None:
            x = ACTIVATIONS[self.closing_act](batch_norm(train, self.bn_momentum, self.dtype, "bn_final")(x))
            out["bn_final"] = x
        return x, out


def add_prefixed(out: dict, prefix: str, inner: dict) -> None:
    """Record a unit's inner activations under `prefix/`, keeping input-to-output order."""
    out.update({f"{prefix}/{k}": v for k, v in inner.items()})


def finish(x, out: dict, num_classes: Optional[int], dtype: Any):
    """End of a part: an extractor reports `features`; a head pools and classifies.

    Call from inside a compact method: the `classifier` Dense becomes a child of the calling module,
    so its path is `<part>/classifier/...`.
    """
    if num_classes is None:
        out["features"] = x
        return x, out
    out["pre_logits_map"] = x
    x = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = x
    # Losses and metrics want float32 even when the body runs in a lower precision.
    logits = nn.Dense(num_classes, dtype=dtype, name="classifier")(x).astype(jnp.float32)
    out["logits"] = logits
    return logits, out
