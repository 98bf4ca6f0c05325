"""PyTorch twins of our ResNet-20, MobileNetV2 and plain isometric net (same layers and widths), for speed comparisons only."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout, momentum=0.1)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def resnet20(width: int = 16, num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [*conv_bn(3, width), nn.ReLU()]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            layers.append(BasicBlock(cin, cout, 2 if (stage and not block) else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        expand = [*conv_bn(cin, hidden, 1), nn.ReLU6()] if expansion != 1 else []
        self.body = nn.Sequential(*expand, *conv_bn(hidden, hidden, 3, stride, hidden), nn.ReLU6(),
                                  *conv_bn(hidden, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v2(width: int = 16, expansion: int = 6, num_classes: int = 10) -> nn.Module:
    """Matches modular.models.MobileNetV2's defaults: stages (1, 1.5, 2, 4, 6) x width, first one unexpanded."""
    widths = [int(width * m) for m in (1, 1.5, 2, 4, 6)]
    blocks, strides = (1, 2, 2, 2, 1), (1, 2, 2, 2, 1)
    layers: list[nn.Module] = [*conv_bn(3, 2 * width), nn.ReLU6()]
    cin = 2 * width
    for stage, (cout, n, s) in enumerate(zip(widths, blocks, strides)):
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, 1 if stage == 0 else expansion))
            cin = cout
    layers += [*conv_bn(cin, 8 * width, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(8 * width, num_classes)]
    return nn.Sequential(*layers)


class IsometricBlock(nn.Module):
    """modular.models.isometric's block: 1x1 expand-BN-hswish, depthwise-BN-hswish, SE, 1x1 project-BN, residual."""

    def __init__(self, c: int, e: int, s: int):
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(c, e, 1), nn.BatchNorm2d(e, momentum=0.1)
        self.dw, self.bn2 = nn.Conv2d(e, e, 3, 1, 1, groups=e), nn.BatchNorm2d(e, momentum=0.1)
        self.se_down, self.se_up = nn.Linear(e, s), nn.Linear(s, e)
        self.proj, self.bn3 = nn.Conv2d(e, c, 1), nn.BatchNorm2d(c, momentum=0.1)

    def forward(self, x):
        h = nn.functional.hardswish(self.bn1(self.expand(x)))
        h = nn.functional.hardswish(self.bn2(self.dw(h)))
        z = torch.relu(self.se_down(h.mean((2, 3))))
        h = h * nn.functional.hardsigmoid(self.se_up(z))[:, :, None, None]
        return x + self.bn3(self.proj(h))


def isometric(width: int = 32, expansion: int = 4, depth: int = 8, stride: int = 2, se_ratio: int = 4,
              out_dim: int = 32, num_classes: int = 10) -> nn.Module:
    """Matches the plain (no templates) modular.models.isometric net the benchmarks time."""
    e = width * expansion
    return nn.Sequential(nn.Conv2d(3, width, stride, stride),
                         *[IsometricBlock(width, e, e // se_ratio) for _ in range(depth)],
                         nn.Conv2d(width, out_dim, 1), nn.Hardswish(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(out_dim, out_dim), nn.Hardswish(), nn.Linear(out_dim, num_classes))
