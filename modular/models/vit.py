"""A small Vision Transformer (Dosovitskiy et al. 2021) as unit runs, for Head2Toe's token features.

Units: `embed` (non-overlapping patches -> tokens, plus learned position embeddings), `block1..blockN`
(pre-norm encoder blocks), `final` (LayerNorm); a head mean-pools the tokens and classifies. Every block
reports `blockI/pre_attention` (the normalised input attention sees), `blockI/attention` and `blockI/mlp`
(each branch's output before its residual add) and `blockI` (the tokens leaving the block): the
activations Head2Toe selects from (Evci et al. 2022, Sec. 4). No BatchNorm, so no batch_stats collection.
`pool="tok"` prepends a learned class token after the position embeddings and classifies it instead of
the tokens' mean (big_vision's `pool_type="tok"`, the original ViT's classifier).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from modular.models import layers


POOLS = ("gap", "tok")


def unit_names(depth: int) -> tuple:
    return ("embed",) + tuple(f"block{i + 1}" for i in range(depth)) + ("final",)


class EncoderBlock(nn.Module):
    """x + MHSA(LN(x)), then + MLP(LN(.)); returns the tokens and the named branch activations."""
    heads: int
    mlp_ratio: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        y = nn.LayerNorm(dtype=self.dtype, name="ln_attention")(x)
        out = {"pre_attention": y}
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, name="attention")(y, y)
        out["attention"] = y
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        y = nn.Dense(width * self.mlp_ratio, dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))
        out["mlp"] = y
        return x + y, out


class ViT(nn.Module):
    """A contiguous run of ViT units; with `num_classes` it also pools tokens and classifies (a head)."""
    units: Sequence[str]
    width: int = 32
    patch: int = 4
    heads: int = 2
    mlp_ratio: int = 2
    num_classes: Optional[int] = None
    pool: str = "gap"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no BatchNorm or dropout: train and eval are the same function
        out = {}
        for unit in self.units:
            if unit == "embed":
                if x.shape[1] % self.patch or x.shape[2] % self.patch:
                    raise ValueError(f"ViT patch size {self.patch} must divide the image size {x.shape[1:3]}.")
                x = nn.Conv(self.width, (self.patch, self.patch), strides=self.patch, padding="VALID",
                            dtype=self.dtype, name="embed")(x)
                x = x.reshape(x.shape[0], -1, x.shape[-1])
                pos = self.param("position", nn.initializers.normal(0.02), (1,) + x.shape[1:])
                x = x + pos.astype(x.dtype)
                if self.pool == "tok":
                    cls = self.param("cls", nn.initializers.zeros, (1, 1, x.shape[-1]))
                    # zeros_like(x[:, :1]) carries the batch sharding of x, so the concatenation is valid under an
                    # explicitly sharded mesh (a broadcast_to of the parameter would be replicated)
                    x = jnp.concatenate([jnp.zeros_like(x[:, :1]) + cls.astype(x.dtype), x], 1)
            elif unit == "final":
                x = nn.LayerNorm(dtype=self.dtype, name="final")(x)
            else:
                x, inner = EncoderBlock(self.heads, self.mlp_ratio, self.dtype, name=unit)(x)
                layers.add_prefixed(out, unit, inner)
            out[unit] = x
        if self.num_classes is None:
            out["features"] = x
            return x, out
        out["pre_logits_tokens"] = x
        x = x[:, 0] if self.pool == "tok" else jnp.mean(x, axis=1)
        out["pre_logits"] = x
        logits = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x).astype(jnp.float32)
        out["logits"] = logits
        return logits, out
