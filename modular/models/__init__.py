"""Models as SplitModels (extractor + head) so their parameter trees split into shareable/private parts.

    model = models.build(cfg, num_classes)              # cfg: models.default_config('resnet'), ('isometric') etc.
    variables = models.init(model, rng, (1, 32, 32, 3))
    logits, out, new_state = models.apply(model, variables, x, mode='train')
"""
from modular.models.isometric import Isometric
from modular.models.layers import ConvBN, Stage
from modular.models.mobilenet import InvertedResidual, MobileNetV2
from modular.models.registry import (build, build_extractor, build_head, default_config, known_names,
                                     unit_names)
from modular.models.resnet import BasicBlock, Bottleneck, ImageNetResNet, PreActBlock, ResNet
from modular.models.runtime import MODES, apply, init, split_variables
from modular.models.split import SplitModel
from modular.models.vit import ViT

__all__ = ["build", "build_extractor", "build_head", "default_config", "known_names", "unit_names", "apply",
           "init", "split_variables", "MODES", "SplitModel", "ResNet", "BasicBlock", "PreActBlock", "Bottleneck", "ImageNetResNet", "MobileNetV2",
           "InvertedResidual", "ConvBN", "Stage", "ViT", "Isometric"]
