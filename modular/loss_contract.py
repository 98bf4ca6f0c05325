"""The contract between a method's loss function and the training loop, checked once, at trace time.

    loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))

`model_state` is everything of a model's variables except its parameters (`{"batch_stats": ...}` for a
Flax model: `models.split_variables(variables)`); the loss returns it updated (BatchNorm in train mode) or
as it was. A loss that breaks the contract would otherwise fail deep inside tracing, or worse, run: a state
that changes structure every step re-initialises its statistics and recompiles the step each time. Each check
here turns such a misuse into one sentence; none adds work to the compiled step.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import numpy as np

from modular import params as P

SIGNATURE = "loss_fn(params, model_state, batch, rng) -> (loss, (new_model_state, metrics))"


class LossContractError(TypeError):
    """A loss function's signature or return value does not follow SIGNATURE."""


def _name(loss_fn: Callable) -> str:
    return getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__


def check_signature(loss_fn: Callable) -> None:
    """Raise LossContractError unless `loss_fn` can be called with four positional arguments."""
    if not callable(loss_fn):
        raise LossContractError(f"loss_fn must be a function {SIGNATURE}, got {type(loss_fn).__name__}.")
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check before the call
        return
    try:
        signature.bind(None, None, None, None)
    except TypeError:
        raise LossContractError(f"loss_fn {_name(loss_fn)}{signature} cannot be called as {SIGNATURE}.") from None


def check_output(loss_fn: Callable, output: Any) -> tuple[Any, tuple[Any, dict]]:
    """`output` of one call, checked: a scalar loss, then a pair (new model state, dict of scalar metrics)."""
    ok = isinstance(output, tuple) and len(output) == 2 and isinstance(output[1], tuple) and len(output[1]) == 2
    if not ok:
        raise LossContractError(f"loss_fn {_name(loss_fn)} returned {_shape_of(output)}; expected {SIGNATURE}.")
    loss, (_, metrics) = output
    if np.shape(loss) != ():
        raise LossContractError(f"loss_fn {_name(loss_fn)} returned a loss of shape {np.shape(loss)}; the loss "
                                f"must be a scalar ({SIGNATURE}).")
    if not isinstance(metrics, dict):
        raise LossContractError(f"loss_fn {_name(loss_fn)} returned metrics of type {type(metrics).__name__}; "
                                f"metrics must be a dict of scalars ({SIGNATURE}).")
    return output


def _shape_of(value: Any, depth: int = 0) -> str:
    """'(array, dict)'-style description of a return value, for the error sentence."""
    if isinstance(value, tuple) and depth < 2:
        return "(" + ", ".join(_shape_of(v, depth + 1) for v in value) + ")"
    if hasattr(value, "shape") or isinstance(value, (float, int)):
        return "an array" if depth == 0 else "array"
    return ("a " if depth == 0 else "") + type(value).__name__


def _described(tree: Any) -> dict[str, tuple]:
    return {P.keypath_str(kp): np.shape(leaf) for kp, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _top_keys(tree: Any) -> str:
    keys = list(tree.keys()) if hasattr(tree, "keys") else []
    return "{" + ", ".join(repr(k) for k in keys) + "}" if keys else f"no keys ({type(tree).__name__})"


def same_structure_state(loss_fn: Callable, given: Any, returned: Any) -> Any:
    """`returned` in the exact pytree structure of `given`; a state with other paths or shapes is an error.

    The common cause: passing `variables["batch_stats"]` instead of `{"batch_stats": ...}` (the variables
    without "params"), so that the model re-creates its statistics under a new key on every step."""
    want, got = _described(given), _described(returned)
    if want != got:
        raise ValueError(
            f"loss_fn {_name(loss_fn)} returned a model state with top-level keys {_top_keys(returned)} but was "
            f"given {_top_keys(given)}: pass the model's variables without 'params' as model_state "
            f"(models.split_variables(variables)), and return what models.apply gives back.")
    by_path = {P.keypath_str(kp): leaf for kp, leaf in jax.tree_util.tree_flatten_with_path(returned)[0]}
    given_paths = [P.keypath_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(given)[0]]
    return jax.tree.unflatten(jax.tree.structure(given), [by_path[p] for p in given_paths])
