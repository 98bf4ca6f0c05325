"""big_vision ViT checkpoints (`.npz` of `/`-joined parameter names) -> the library's ViT variables.

big_vision's ViT (google-research/big_vision, models/vit.py) and the library's share flax's layers, so
the conversion is renaming: `embedding` -> `embed`, `pos_embedding` -> `position`, `cls` -> `cls`,
`Transformer/encoderblock_{i}` -> `block{i+1}` with `LayerNorm_0/1` -> `ln_attention/ln_mlp`,
`MultiHeadDotProductAttention_0` -> `attention`, `MlpBlock_0/Dense_0/1` -> `mlp_in/mlp_out`,
`Transformer/encoder_norm` -> `final`, `head` -> `classifier`. Two older layouts big_vision still reads are
read too: position embeddings inside `Transformer` (`posembed_input`), and a class token's position
embedding stored as the first row (it is added to `cls`). A representation layer (`pre_logits`) or a
MAP head has no counterpart here: such a file is refused.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from modular.pretrained.torchvision import ConversionError

_BLOCK_LAYERS = {"LayerNorm_0": "ln_attention", "LayerNorm_1": "ln_mlp", "MultiHeadDotProductAttention_0": "attention",
                 "MlpBlock_0/Dense_0": "mlp_in", "MlpBlock_0/Dense_1": "mlp_out"}


def _rename(name: str) -> str | None:
    for old, new in (("embedding/", "embed/"), ("Transformer/encoder_norm/", "final/"), ("head/", "classifier/")):
        if name.startswith(old):
            return new + name[len(old):]
    if name in ("cls", "pos_embedding", "Transformer/pos_embedding", "Transformer/posembed_input/pos_embedding"):
        return "cls" if name == "cls" else "position"
    m = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.+)/(\w+)", name)
    if m:
        layer = m.group(2)
        for old, new in _BLOCK_LAYERS.items():
            if layer == old or layer.startswith(old + "/"):
                return f"block{int(m.group(1)) + 1}/{new}{layer[len(old):]}/{m.group(3)}"
    return None


def is_big_vision_vit(names) -> bool:
    return any(n.startswith("Transformer/encoderblock_") for n in names)


def vit(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A big_vision ViT's flat `{name: array}` -> `{"params/<unit path>": array}` of the library's `vit`."""
    out = {}
    for name, value in arrays.items():
        target = _rename(name)
        if target is None:
            raise ConversionError(f"The big_vision ViT parameter '{name}' has no counterpart in the library's ViT "
                                  f"(a representation layer or MAP head is not supported).")
        out[f"params/{target}"] = np.asarray(value)
    position, cls = out.get("params/position"), out.get("params/cls")
    if position is not None and cls is not None:
        tokens = position.shape[1]
        if int(np.sqrt(tokens)) ** 2 + 1 == tokens:   # old layout: the class token's embedding comes first
            out["params/cls"] = cls + position[:, :1]
            out["params/position"] = position[:, 1:]
    return out
