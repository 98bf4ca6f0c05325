"""From a config to modules: defaults, validation, and where the extractor/head split falls.

Every architecture is an ordered unit list; `split` names the last unit of the extractor, the head
holds the remaining units plus pooling and the classifier. Bad configs fail with one sentence.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from modular.models import isometric, mobilenet, resnet, vit
from modular.models.split import INPUT_NORMS, SplitModel

_COMMON = dict(width=16, bn_momentum=0.9, dtype="float32", input_norm="")
_DEFAULTS = {
    "resnet": dict(depth=20, widen=1, split=resnet.UNITS[-1]),
    "resnet_imagenet": dict(depth=50, width=64, split=resnet.IMAGENET_UNITS[-1]),
    "wrn": dict(depth=16, widen=4, split=resnet.UNITS[-1]),
    "mobilenet_v2": dict(expansion=6, split=mobilenet.UNITS[-1]),
    "mobilenet_v2_imagenet": dict(expansion=6, split=mobilenet.IMAGENET_UNITS[-1]),
    "vit": dict(depth=4, patch=4, heads=2, mlp_ratio=2, pool="gap", split="final"),
    "isometric": dict({k: v for k, v in isometric.default_config().items() if k not in _COMMON},
                      split=isometric.UNITS[-1]),
}
# Keys meaningful to some architecture; the others ignore them, so one model config can switch `name`.
# `init` (weights to start from, modular.pretrained) is read by whoever initialises the model, not here.
_KNOWN_KEYS = {"name", "depth", "widen", "expansion", "split", "patch", "heads", "mlp_ratio", "pool", "init",
               *_COMMON, *isometric.default_config()}


def known_names() -> list:
    return sorted(_DEFAULTS)


def _check_name(name: Any) -> str:
    if name not in _DEFAULTS:
        raise ValueError(f"Unknown model name {name!r}; known names are: {', '.join(known_names())}.")
    return name


def default_config(name: str = "resnet") -> ml_collections.ConfigDict:
    """The defaults of architecture `name` (ResNet-20, ImageNet ResNet-50, WRN-16-4, MobileNetV2 width 16
    for small images and for ImageNet, ViT 4 blocks of width 16 on 4x4 patches, the isometric net of 6 blocks
    mixing 3 templates; linear head)."""
    return ml_collections.ConfigDict(dict(name=_check_name(name), **{**_COMMON, **_DEFAULTS[name]}))


def unit_names(cfg) -> tuple:
    """The ordered units of cfg's architecture; any of them is a valid `split`."""
    name = _check_name(cfg.get("name"))
    if name == "vit":
        return vit.unit_names(cfg.get("depth") or _DEFAULTS["vit"]["depth"])
    if name == "isometric":
        return isometric.UNITS
    return {"mobilenet_v2": mobilenet.UNITS, "mobilenet_v2_imagenet": mobilenet.IMAGENET_UNITS,
            "resnet_imagenet": resnet.IMAGENET_UNITS}.get(name, resnet.UNITS)


def _resolve(cfg) -> dict:
    """cfg over its architecture's defaults, validated."""
    given = dict(cfg.items()) if hasattr(cfg, "items") else dict(cfg)
    spec = dict(default_config(_check_name(given.get("name"))).items())
    unknown = sorted(set(given) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"Unknown model config key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KNOWN_KEYS))}.")
    spec.update({k: v for k, v in given.items() if v is not None})
    name = spec["name"]
    sized = {"vit": ("depth",), "isometric": ("depth", "stride", "out_dim", "se_ratio")}.get(name, ())
    for key in ("width", "widen", "expansion", "patch", "heads", "mlp_ratio") + sized:
        if key in spec and (not isinstance(spec[key], int) or spec[key] < 1):
            raise ValueError(f"Model config {key} must be a positive integer; got {spec[key]!r}.")
    if spec["input_norm"] not in INPUT_NORMS:
        raise ValueError(f"Model config input_norm {spec['input_norm']!r} is not one of: "
                         f"{', '.join(repr(k) for k in INPUT_NORMS)}.")
    if name == "vit" and spec["pool"] not in vit.POOLS:
        raise ValueError(f"ViT pool {spec['pool']!r} is not one of: {', '.join(vit.POOLS)}.")
    if name == "vit" and spec["width"] % spec["heads"]:
        raise ValueError(f"ViT width {spec['width']} must be divisible by its number of heads {spec['heads']}.")
    units = unit_names(spec)
    if spec["split"] not in units:
        raise ValueError(f"Split {spec['split']!r} is not a unit of {name}; choose one of: {', '.join(units)}.")
    if name == "resnet_imagenet" and spec["depth"] not in resnet.IMAGENET_DEPTHS:
        raise ValueError(f"resnet_imagenet depth must be one of {', '.join(map(str, resnet.IMAGENET_DEPTHS))}; "
                         f"got {spec['depth']!r}.")
    if name in ("resnet", "wrn"):
        offset = 2 if name == "resnet" else 4
        depth = spec["depth"]
        if not isinstance(depth, int) or depth < 6 + offset or (depth - offset) % 6:
            raise ValueError(f"{name} depth must be 6n+{offset} with n >= 1 (e.g. "
                             f"{'8, 20, 56' if name == 'resnet' else '10, 16, 28'}); got {depth!r}.")
    if name == "isometric":
        isometric.check_config(ml_collections.ConfigDict(spec), num_tasks=1)
    try:
        spec["dtype"] = jnp.dtype(spec["dtype"])
    except TypeError:
        raise ValueError(f"Model config dtype {spec['dtype']!r} is not a dtype name (e.g. 'float32', 'bfloat16').")
    return spec


def _part(spec: dict, units: tuple, num_classes) -> nn.Module:
    common = dict(units=units, width=spec["width"], num_classes=num_classes,
                  bn_momentum=spec["bn_momentum"], dtype=spec["dtype"])
    if spec["name"] in ("mobilenet_v2", "mobilenet_v2_imagenet"):
        return mobilenet.MobileNetV2(expansion=spec["expansion"], imagenet=spec["name"] == "mobilenet_v2_imagenet",
                                     **common)
    if spec["name"] == "resnet_imagenet":
        return resnet.ImageNetResNet(depth=spec["depth"], **common)
    if spec["name"] == "isometric":
        return isometric.Isometric(units=units, num_classes=num_classes, dtype=spec["dtype"],
                                   **{k: spec[k] for k in isometric.default_config()})
    if spec["name"] == "vit":
        return vit.ViT(units=units, width=spec["width"], patch=spec["patch"], heads=spec["heads"],
                       mlp_ratio=spec["mlp_ratio"], num_classes=num_classes, pool=spec["pool"], dtype=spec["dtype"])
    wrn = spec["name"] == "wrn"
    n = (spec["depth"] - (4 if wrn else 2)) // 6
    return resnet.ResNet(num_blocks=n, widen=spec["widen"] if wrn else 1, preact=wrn, **common)


def _split_units(spec: dict) -> tuple:
    units = unit_names(spec)
    i = units.index(spec["split"]) + 1
    return units[:i], units[i:]


def _check_classes(num_classes) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    return num_classes


def build_extractor(cfg) -> nn.Module:
    """The units up to and including `cfg.split`; returns `(features, out)`."""
    spec = _resolve(cfg)
    return _part(spec, _split_units(spec)[0], None)


def build_head(cfg, num_classes: int) -> nn.Module:
    """Units after `cfg.split` + pool + classifier; fits build_extractor(cfg)'s features (task or aux head)."""
    spec = _resolve(cfg)
    return _part(spec, _split_units(spec)[1], _check_classes(num_classes))


def build(cfg, num_classes: int) -> SplitModel:
    """The whole classifier: params subtrees 'extractor' (shareable) and 'head' (task-private); images are
    first normalised as `input_norm` says (published weights: 'imagenet' for torchvision's, 'symmetric' for
    big_vision's)."""
    spec = _resolve(cfg)
    return SplitModel(extractor=build_extractor(cfg), head=build_head(cfg, num_classes), input_norm=spec["input_norm"])
