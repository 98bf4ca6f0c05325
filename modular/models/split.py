"""SplitModel: a model is an extractor followed by a head, so its parameters split into two subtrees.

`variables['params']['extractor']` is the shareable part and `variables['params']['head']` the
task-private part; swapping heads between models is then a plain dict replacement.
"""

import flax.linen as nn
import jax.numpy as jnp

# Input normalisations published weights were trained with, as (mean, std) per RGB channel: torchvision's
# ImageNet statistics, and big_vision's [-1, 1]. The library's images are in [0, 1].
INPUT_NORMS = {"": None, "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
               "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def normalise_input(x, input_norm: str):
    """x in [0, 1] -> the input the weights expect ('' leaves it unchanged)."""
    if not input_norm:
        return x
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"Unknown input_norm {input_norm!r}; known: {', '.join(repr(k) for k in INPUT_NORMS)}.")
    if x.shape[-1] != 3:
        raise ValueError(f"input_norm {input_norm!r} is for RGB images; these have {x.shape[-1]} channel(s) "
                         f"(set config.data.channels=3).")
    mean, std = (jnp.asarray(v, jnp.float32) for v in INPUT_NORMS[input_norm])
    return (x - mean) / std


class SplitModel(nn.Module):
    """Composes `extractor` and `head`; both return `(output, out)` with `out` a dict of activations.
    `input_norm` (a key of INPUT_NORMS) normalises the images first."""
    extractor: nn.Module
    head: nn.Module
    input_norm: str = ""

    def __call__(self, x, train: bool = False):
        feats, out = self.extractor(normalise_input(x, self.input_norm), train=train)
        logits, head_out = self.head(feats, train=train)
        return logits, {**out, **head_out}

    def extract(self, x, train: bool = False):
        """Extractor only (pass as `method=`), e.g. to cache the features of a frozen trunk."""
        return self.extractor(normalise_input(x, self.input_norm), train=train)
