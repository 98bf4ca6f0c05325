"""Start a model from published or saved weights: `--config.model.init=PATH`.

    variables = models.init(model, key, shape)
    variables, report = pretrained.load(variables, "resnet50.pth", model_cfg)   # shapes and names checked
    print(pretrained.describe(report, "resnet50.pth"))

PATH is a torchvision state dict (`.pth`/`.pt`/`.bin`) for `resnet_imagenet` or `mobilenet_v2_imagenet`, a
big_vision ViT `.npz` for `vit`, or this library's own weights (a `.msgpack` of a variables tree, an
orbax checkpoint folder or a run's workdir) for any architecture. A classifier for another number of
classes is re-initialised; anything else that does not fit is one sentence.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from modular.pretrained import big_vision, files, torchvision
from modular.pretrained.files import WeightsFileError, read
from modular.pretrained.loading import PretrainedMismatchError, describe, load_converted, unit_path
from modular.pretrained.torchvision import ConversionError

TORCHVISION = {"resnet_imagenet": torchvision.resnet, "mobilenet_v2_imagenet": torchvision.mobilenet_v2}
EXPECTED_INPUT = {"torch": "imagenet", "big_vision": "symmetric"}   # the normalisation each source trained with


def convert(kind: str, arrays: Mapping[str, np.ndarray], model_name: str, source: str = "the file") -> dict:
    """A file's flat arrays (files.read) -> unit-path variables for architecture `model_name`."""
    if kind == "torch":
        if model_name not in TORCHVISION:
            raise ConversionError(f"{source} is a torch state dict, which loads into {' or '.join(TORCHVISION)} "
                                  f"(torchvision's layout), not into {model_name}.")
        return TORCHVISION[model_name](arrays)
    if kind == "npz" and big_vision.is_big_vision_vit(arrays):
        if model_name != "vit":
            raise ConversionError(f"{source} is a big_vision ViT checkpoint, which loads into vit, not into {model_name}.")
        return big_vision.vit(arrays)
    if kind == "npz" and not any(k.startswith("params/") for k in arrays):
        raise ConversionError(f"{source} is neither a big_vision ViT .npz (Transformer/encoderblock_* names) "
                              f"nor this library's variables (params/... names).")
    return {unit_path(k): v for k, v in arrays.items()}


def load(variables: Mapping, path: str, model_cfg) -> tuple[dict, dict]:
    """`variables` (a models.init result) with the weights at `path`; returns (variables, report)."""
    kind, arrays = read(path)
    name = model_cfg.get("name") if hasattr(model_cfg, "get") else model_cfg
    converted = convert(kind, arrays, name, source=path)
    variables, report = load_converted(variables, converted, source=path, model=f"model {name}")
    source = "big_vision" if kind == "npz" and big_vision.is_big_vision_vit(arrays) else kind
    expected, given = EXPECTED_INPUT.get(source), (model_cfg.get("input_norm") if hasattr(model_cfg, "get") else "")
    report["notes"] = ([f"these {source} weights expect input_norm={expected!r}, the model has {given or ''!r} "
                        f"(set --config.model.input_norm={expected})"] if expected and given != expected else [])
    return variables, report


__all__ = ["load", "convert", "read", "describe", "load_converted", "unit_path", "big_vision", "files",
           "torchvision", "WeightsFileError", "ConversionError", "PretrainedMismatchError"]
