"""torchvision state dicts -> the library's variable names (ImageNet ResNet and MobileNetV2).

A converted checkpoint is a flat dict `{"params/<unit path>": array, "batch_stats/<unit path>": array}`
whose unit paths read like the unsplit network's (`stage1/block0/conv1/kernel`, `classifier/bias`);
`modular.pretrained.loading` places them under the model's `extractor`/`head` wherever its split falls.
Layouts differ only by axis order: torch convolutions are (out, in, kh, kw), flax kernels (kh, kw, in,
out); torch linear weights (out, in), flax (in, out). BatchNorm's weight/bias are the `scale`/`bias`
parameters and its running mean/var the `mean`/`var` statistics; `num_batches_tracked` has no use here.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping

import numpy as np

from modular.models import mobilenet


class ConversionError(ValueError):
    """A file is not the kind of checkpoint its converter reads."""


def _leaves(module: str, target: str, state: Mapping[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    """The variables of one torch module `module` (a conv, a BN or a linear layer) under `target`."""
    get = lambda leaf: np.asarray(state[f"{module}.{leaf}"])
    if kind == "conv":
        return {f"params/{target}/kernel": get("weight").transpose(2, 3, 1, 0)}
    if kind == "linear":
        return {f"params/{target}/kernel": get("weight").T, f"params/{target}/bias": get("bias")}
    return {f"params/{target}/scale": get("weight"), f"params/{target}/bias": get("bias"),
            f"batch_stats/{target}/mean": get("running_mean"), f"batch_stats/{target}/var": get("running_var")}


def _convert(state: Mapping[str, np.ndarray], what: str, rename: Callable[[str], tuple[str, str] | None]) -> dict:
    """Every module of `state` through `rename(module) -> (target, kind)`; one sentence on a key it does not know."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    modules = sorted({k.rsplit(".", 1)[0] for k in state})
    out, used = {}, set()
    for module in modules:
        mapped = rename(module)
        if mapped is None:
            raise ConversionError(f"This is not a torchvision {what} state dict: it has '{module}', which a "
                                  f"torchvision {what} does not.")
        target, kind = mapped
        leaves = {"conv": ("weight",), "linear": ("weight", "bias"),
                  "bn": ("weight", "bias", "running_mean", "running_var")}[kind]
        missing = [leaf for leaf in leaves if f"{module}.{leaf}" not in state]
        if missing:
            raise ConversionError(f"The torchvision {what} state dict lacks '{module}.{missing[0]}'.")
        out.update(_leaves(module, target, state, kind))
        used.update(f"{module}.{leaf}" for leaf in leaves)
    extra = sorted(set(state) - used)
    if extra:
        raise ConversionError(f"This is not a torchvision {what} state dict: it has '{extra[0]}', which a "
                              f"torchvision {what} does not.")
    return out


def resnet(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`torchvision.models.resnet{18,34,50,101,152}().state_dict()` -> `resnet_imagenet` variables."""
    def rename(module):
        if module in ("conv1", "bn1"):
            return ("stem/conv", "conv") if module == "conv1" else ("stem/bn", "bn")
        if module == "fc":
            return "classifier", "linear"
        m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])", module)
        if not m:
            return None
        stage, block, layer = m.groups()
        name = {"downsample.0": "shortcut_conv", "downsample.1": "bn_shortcut"}.get(layer, layer)
        return f"stage{stage}/block{block}/{name}", "bn" if name.startswith("bn") else "conv"
    return _convert(state, "ResNet", rename)


def mobilenet_v2(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`torchvision.models.mobilenet_v2().state_dict()` -> `mobilenet_v2_imagenet` variables.

    torchvision numbers its layers `features.0` (stem) ... `features.18` (final 1x1 conv); the blocks in
    between run through the paper's stages in order. A block's `conv` list is [dw, project, bn] without
    expansion (the first block) and [expand, dw, project, bn] with it.
    """
    blocks = [(f"stage{s + 1}", b) for s, (_, _, n, _) in enumerate(mobilenet.IMAGENET_STAGES) for b in range(n)]
    final = len(blocks) + 1
    expands = {int(m.group(1)) for k in state if (m := re.fullmatch(r"features\.(\d+)\.conv\.3\.weight", k))}

    def rename(module):
        m = re.fullmatch(r"features\.(\d+)\.(\d)", module)
        if m and int(m.group(1)) in (0, final):
            unit = "stem" if m.group(1) == "0" else "final"
            return (f"{unit}/conv", "conv") if m.group(2) == "0" else (f"{unit}/bn", "bn")
        if module == "classifier.1":
            return "classifier", "linear"
        m = re.fullmatch(r"features\.(\d+)\.conv\.(\d(?:\.\d)?)", module)
        if not m or not 1 <= int(m.group(1)) <= len(blocks):
            return None
        stage, block = blocks[int(m.group(1)) - 1]
        layout = ({"0.0": "expand_conv", "0.1": "bn_expand", "1.0": "dw_conv", "1.1": "bn_dw", "2": "project_conv",
                   "3": "bn_project"} if int(m.group(1)) in expands else
                  {"0.0": "dw_conv", "0.1": "bn_dw", "1": "project_conv", "2": "bn_project"})
        name = layout.get(m.group(2))
        return None if name is None else (f"{stage}/block{block}/{name}", "bn" if name.startswith("bn") else "conv")
    return _convert(state, "MobileNetV2", rename)
