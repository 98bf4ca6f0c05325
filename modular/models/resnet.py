"""CIFAR-style ResNet (He et al. 2016) and Wide ResNet (Zagoruyko & Komodakis 2016) as unit runs, and
the ImageNet ResNet (18/34/50/101/152) whose weights torchvision publishes.

The CIFAR network is the unit list `stem, stage1, stage2, stage3` followed by pooling and a classifier;
the ImageNet one `stem` (7x7/2 conv + 3x3/2 max-pool), `stage1..stage4`.
`ResNet` builds any contiguous run of those units, so the extractor and head of a SplitModel are two
instances of the same class and their parameter paths read like the unsplit network's.
"""
import functools

import flax.linen as nn

from modular.models import layers
from modular.platform.fusion import fusion_boundary

UNITS = ("stem", "stage1", "stage2", "stage3")
IMAGENET_UNITS = UNITS + ("stage4",)
# depth -> (block kind, blocks per stage), as in He et al. 2016, Table 1.
IMAGENET_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                   101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


class BasicBlock(layers.Block):
    """Post-activation block: conv-BN-ReLU-conv-BN + shortcut, ReLU; 1x1 conv+BN shortcut on shape change."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = functools.partial(layers.batch_norm, train, self.bn_momentum, self.dtype)
        y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
        y = fusion_boundary(nn.relu(bn("bn1")(y)))  # conv2's weight gradient reads it transposed
        out = {"conv1": y}
        y = bn("bn2")(layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = layers.conv(self.features, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(x)
            shortcut = bn("bn_shortcut")(shortcut)
        return fusion_boundary(nn.relu(y + shortcut)), out


class Bottleneck(layers.Block):
    """1x1 reduce -> 3x3 (strided, as torchvision's "v1.5") -> 1x1 expand to 4x `features`, + shortcut, ReLU."""
    expansion: int = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = functools.partial(layers.batch_norm, train, self.bn_momentum, self.dtype)
        out = {}
        y = fusion_boundary(nn.relu(bn("bn1")(layers.conv(self.features, 1, dtype=self.dtype, name="conv1")(x))))
        out["conv1"] = y
        y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv2")(y)
        y = fusion_boundary(nn.relu(bn("bn2")(y)))
        out["conv2"] = y
        outputs = self.features * self.expansion
        y = bn("bn3")(layers.conv(outputs, 1, dtype=self.dtype, name="conv3")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != outputs:
            shortcut = layers.conv(outputs, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(x)
            shortcut = bn("bn_shortcut")(shortcut)
        return fusion_boundary(nn.relu(y + shortcut)), out


class PreActBlock(layers.Block):
    """Pre-activation block of Wide ResNets: BN-ReLU-conv twice + shortcut (1x1 conv on shape change)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        bn = functools.partial(layers.batch_norm, train, self.bn_momentum, self.dtype)
        # Both activations feed convolutions whose weight gradients read them transposed: materialise them.
        pre = fusion_boundary(nn.relu(bn("bn1")(x)))
        y = layers.conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(pre)
        y = fusion_boundary(nn.relu(bn("bn2")(y)))
        out = {"conv1": y}
        y = layers.conv(self.features, 3, dtype=self.dtype, name="conv2")(y)
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            # As in the WRN paper, the projection sees the pre-activated input.
            shortcut = layers.conv(self.features, 1, self.stride, dtype=self.dtype, name="shortcut_conv")(pre)
        return fusion_boundary(y + shortcut), out


class ResNet(layers.UnitRun):
    """A contiguous run of ResNet/WRN units; with `num_classes` it also pools and classifies (a head).

    `num_blocks` is n per stage (depth 6n+2 for ResNet, 6n+4 for WRN); stage k has
    `width * widen * 2**(k-1)` channels and strides 2 from stage2 on. `preact` selects the WRN variant:
    pre-activation blocks, a plain-conv stem, and a closing BN-ReLU inside stage3.
    """
    num_blocks: int = 3
    widen: int = 1
    preact: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = {}
        for unit in self.units:
            if unit == "stem":
                x = layers.ConvBN(self.width, 3, norm=not self.preact, act=None if self.preact else "relu",
                                  bn_momentum=self.bn_momentum, dtype=self.dtype, name="stem")(x, train=train)
                out["stem"] = x
                continue
            k = UNITS.index(unit)  # stage index 1..3
            block = functools.partial(PreActBlock if self.preact else BasicBlock,
                                      features=self.width * self.widen * 2 ** (k - 1),
                                      bn_momentum=self.bn_momentum, dtype=self.dtype)
            closing = "relu" if self.preact and unit == UNITS[-1] else None
            x, inner = layers.Stage(block, self.num_blocks, stride=1 if k == 1 else 2, closing_act=closing,
                                    bn_momentum=self.bn_momentum, dtype=self.dtype, name=unit)(x, train=train)
            layers.add_prefixed(out, unit, inner)
        return layers.finish(x, out, self.num_classes, self.dtype)


class ImageNetResNet(layers.UnitRun):
    """A contiguous run of the ImageNet ResNet's units (torchvision's layout): stage k has `width * 2**(k-1)`
    planes (x4 outputs in bottleneck blocks) and strides 2 from stage2 on; `depth` picks the blocks."""
    depth: int = 50

    @nn.compact
    def __call__(self, x, train: bool = False):
        kind, counts = IMAGENET_DEPTHS[self.depth]
        out = {}
        for unit in self.units:
            if unit == "stem":
                x = layers.ConvBN(self.width, 7, 2, bn_momentum=self.bn_momentum, dtype=self.dtype,
                                  name="stem")(x, train=train)
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
                out["stem"] = x
                continue
            k = IMAGENET_UNITS.index(unit)
            block = functools.partial(Bottleneck if kind == "bottleneck" else BasicBlock,
                                      features=self.width * 2 ** (k - 1), bn_momentum=self.bn_momentum,
                                      dtype=self.dtype)
            x, inner = layers.Stage(block, counts[k - 1], stride=1 if k == 1 else 2, bn_momentum=self.bn_momentum,
                                    dtype=self.dtype, name=unit)(x, train=train)
            layers.add_prefixed(out, unit, inner)
        return layers.finish(x, out, self.num_classes, self.dtype)
