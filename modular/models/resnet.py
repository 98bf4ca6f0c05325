"""CIFAR-style ResNet (He et al. 2016) and Wide ResNet (Zagoruyko & Komodakis 2016) as unit runs.

The network is the unit list `stem, stage1, stage2, stage3` followed by pooling and a classifier.
`ResNet` builds any contiguous run of those units, so the extractor and head of a SplitModel are two
instances of the same class and their parameter paths read like the unsplit network's.
"""
import functools

import flax.linen as nn

from modular.models import layers
from modular.platform.fusion import fusion_boundary

UNITS = ("stem", "stage1", "stage2", "stage3")


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
