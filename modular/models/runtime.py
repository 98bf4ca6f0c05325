"""Initialising and applying models with the three BatchNorm modes the methods need.

'train' normalises with batch statistics and updates the running ones; 'eval' uses the running ones;
'batch_stats' normalises with the test batch's own statistics but keeps the stored running ones, which
is how the compatibility paper evaluates a recombined extractor + head whose statistics do not match.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

MODES = ("train", "eval", "batch_stats")


@functools.lru_cache(maxsize=64)
def _jitted_init(model: nn.Module):
    # Cached per (hashable, unbound) module so re-initialising with another seed does not recompile.
    return jax.jit(functools.partial(model.init, train=False))


def init(model: nn.Module, rng, input_shape: tuple) -> dict:
    """Variables {'params': ..., 'batch_stats': ...} from a jitted init on zeros of `input_shape`.

    `input_shape` includes the batch dimension, e.g. (1, 16, 16, 1).
    """
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    try:
        fn = _jitted_init(model)
    except TypeError:  # a module with an unhashable field: jit without the cache
        fn = jax.jit(functools.partial(model.init, train=False))
    return dict(fn(rng, x))


def split_variables(variables) -> tuple:
    """(params, model_state): a model's variables as the training loop takes them, the model state being
    every collection but 'params' ({'batch_stats': ...}), so that `{'params': params, **model_state}` is the
    variables again."""
    if not hasattr(variables, "keys") or "params" not in variables:
        keys = list(variables.keys()) if hasattr(variables, "keys") else type(variables).__name__
        raise ValueError(f"split_variables takes a model's variables {{'params': ..., 'batch_stats': ...}}, got "
                         f"keys {keys}.")
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def apply(model: nn.Module, variables: dict, x, *, mode: str = "eval", rngs=None, method=None):
    """Run `model` (or its `method`) and return `(logits, out, new_model_state)`.

    `new_model_state` holds the non-parameter collections ({'batch_stats': ...}): updated in 'train'
    mode, the given ones unchanged in 'eval' and 'batch_stats' modes.
    """
    if mode not in MODES:
        raise ValueError(f"Unknown apply mode {mode!r}; known modes are: {', '.join(MODES)}.")
    state = split_variables(variables)[1]
    if mode == "eval":
        logits, out = model.apply(variables, x, train=False, rngs=rngs, method=method)
        return logits, out, state
    (logits, out), updated = model.apply(variables, x, train=True, rngs=rngs, method=method,
                                         mutable=["batch_stats"])
    if mode == "batch_stats":
        return logits, out, state
    return logits, out, {**state, **updated}
