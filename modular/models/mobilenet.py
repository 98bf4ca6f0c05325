"""MobileNetV2 (Sandler et al. 2018) as unit runs: a small one for 16x16 to 32x32 images, and the
ImageNet one whose weights torchvision publishes.

Units: `stem` (3x3 conv), `stage1..stage5` of inverted residual blocks, `final` (1x1 conv), then
pooling and a classifier. Channels are multiples of `width` (stage1's channels), which with width=16
gives MobileNetV2's first five stages (16, 24, 32, 64, 96); strides suit CIFAR-sized inputs.
`imagenet=True` is the paper's network (Table 2): a stride-2 stem, `stage1..stage7` (16, 24, 32, 64, 96,
160, 320 channels at width 16 with 1, 2, 3, 4, 3, 3, 1 blocks) and a 1280-channel `final`, which at
width 16 is torchvision's `mobilenet_v2` (width multiplier 1.0) layer for layer.
"""
import functools

import flax.linen as nn

from modular.models import layers
from modular.platform.fusion import fusion_boundary

# (expansion (None = the configured one), channels / width, blocks, stride) per stage.
STAGES = ((1, 1.0, 1, 1), (None, 1.5, 2, 2), (None, 2.0, 2, 2), (None, 4.0, 2, 2), (None, 6.0, 1, 1))
STEM_MULT, FINAL_MULT = 2.0, 8.0
UNITS = ("stem",) + tuple(f"stage{i + 1}" for i in range(len(STAGES))) + ("final",)
IMAGENET_STAGES = ((1, 1.0, 1, 1), (None, 1.5, 2, 2), (None, 2.0, 3, 2), (None, 4.0, 4, 2), (None, 6.0, 3, 1),
                   (None, 10.0, 3, 2), (None, 20.0, 1, 1))
IMAGENET_FINAL_MULT = 80.0   # 1280 channels at width 16
IMAGENET_UNITS = ("stem",) + tuple(f"stage{i + 1}" for i in range(len(IMAGENET_STAGES))) + ("final",)


def channels(width: int, mult: float) -> int:
    return max(1, int(round(width * mult)))


class InvertedResidual(layers.Block):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; residual when stride 1 and same width."""
    expansion: int = 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = functools.partial(layers.batch_norm, train, self.bn_momentum, self.dtype)
        hidden = x.shape[-1] * self.expansion
        out, y = {}, x
        if self.expansion != 1:
            y = layers.conv(hidden, 1, dtype=self.dtype, name="expand_conv")(y)
            y = nn.relu6(bn("bn_expand")(y))
            out["expand_conv"] = y
        y = layers.conv(hidden, 3, self.stride, groups=hidden, dtype=self.dtype, name="dw_conv")(y)
        y = nn.relu6(bn("bn_dw")(y))
        out["dw_conv"] = y
        y = bn("bn_project")(layers.conv(self.features, 1, dtype=self.dtype, name="project_conv")(y))
        if self.stride == 1 and x.shape[-1] == self.features:
            y = y + x
        return fusion_boundary(y), out


class MobileNetV2(layers.UnitRun):
    """A contiguous run of MobileNetV2 units; with `num_classes` it also pools and classifies (a head)."""
    expansion: int = 6
    imagenet: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        for unit in self.units:
            if unit in ("stem", "final"):
                final_mult = IMAGENET_FINAL_MULT if self.imagenet else FINAL_MULT
                mult, kernel = (STEM_MULT, 3) if unit == "stem" else (final_mult, 1)
                stride = 2 if self.imagenet and unit == "stem" else 1
                x = layers.ConvBN(channels(self.width, mult), kernel, stride, act="relu6",
                                  bn_momentum=self.bn_momentum, dtype=self.dtype, name=unit)(x, train=train)
                out[unit] = x
                continue
            units, stages = (IMAGENET_UNITS, IMAGENET_STAGES) if self.imagenet else (UNITS, STAGES)
            t, mult, n, stride = stages[units.index(unit) - 1]
            block = functools.partial(InvertedResidual, features=channels(self.width, mult),
                                      expansion=self.expansion if t is None else t,
                                      bn_momentum=self.bn_momentum, dtype=self.dtype)
            x, inner = layers.Stage(block, n, stride=stride, name=unit)(x, train=train)
            layers.add_prefixed(out, unit, inner)
        return layers.finish(x, out, self.num_classes, self.dtype)
