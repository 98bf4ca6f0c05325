"""SplitModel: a model is an extractor followed by a head, so its parameters split into two subtrees.

`variables['params']['extractor']` is the shareable part and `variables['params']['head']` the
task-private part; swapping heads between models is then a plain dict replacement.
"""

import flax.linen as nn


class SplitModel(nn.Module):
    """Composes `extractor` and `head`; both return `(output, out)` with `out` a dict of activations."""
    extractor: nn.Module
    head: nn.Module

    def __call__(self, x, train: bool = False):
        feats, out = self.extractor(x, train=train)
        logits, head_out = self.head(feats, train=train)
        return logits, {**out, **head_out}

    def extract(self, x, train: bool = False):
        """Extractor only (pass as `method=`), e.g. to cache the features of a frozen trunk."""
        return self.extractor(x, train=train)
