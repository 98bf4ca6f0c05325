"""Training-state checkpoints (orbax) and portable task-private subtree files.

Training state goes through orbax's CheckpointManager (atomic, async, keeps the last few).
A task-private subtree (a patch, a head, mixture weights) exports to one small msgpack file tagged with
the structure hash of the backbone it was trained on, so loading it onto the wrong backbone fails with
one sentence instead of silently producing garbage.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from modular import params as P

SUBTREE_FORMAT = "modular-subtree-v1"


class CheckpointError(RuntimeError):
    """A checkpoint or subtree file is missing, corrupt, or does not fit."""


def manager(directory: str, *, save_every: int, max_to_keep: int = 2) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=max(save_every, 1),
                                           create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, int] | None:
    """(state, step) of the newest checkpoint, restored onto `target`'s structure and shardings; or None."""
    step = mngr.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        state = mngr.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types; the user needs one sentence
        raise CheckpointError(
            f"Checkpoint step {step} in {mngr.directory} could not be restored onto this run's state "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); it was left untouched: move it away "
            f"or choose another --workdir to start fresh.") from e
    return state, int(step)


def export_subtree(path: str, subtree: Mapping, *, backbone: Mapping, meta: Mapping | None = None) -> int:
    """Write a task-private subtree tagged with its backbone's identity; returns the file size in bytes."""
    payload = {
        "format": SUBTREE_FORMAT,
        "backbone_hash": P.structure_hash(backbone),
        "meta": dict(meta or {}),
        "tree": jax.tree.map(np.asarray, P.flatten(subtree)),
    }
    data = serialization.msgpack_serialize(payload)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: an interrupted export never leaves a half-written file
    return len(data)


def import_subtree(path: str, *, backbone: Mapping, like: Mapping | None = None) -> tuple[dict, dict]:
    """Read a subtree file; check it fits `backbone` (and `like`'s shapes if given). Returns (subtree, meta)."""
    if not os.path.exists(path):
        raise CheckpointError(f"Subtree file {path} does not exist.")
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        if payload.get("format") != SUBTREE_FORMAT:
            raise ValueError("unknown format tag")
    except Exception as e:
        raise CheckpointError(f"Subtree file {path} is corrupt or not a modular subtree file ({e}).") from e
    expected = P.structure_hash(backbone)
    if payload["backbone_hash"] != expected:
        raise CheckpointError(
            f"Subtree file {path} was trained on backbone {payload['backbone_hash']}, but this backbone is "
            f"{expected}: it does not fit.")
    tree = P.unflatten(payload["tree"])
    if like is not None:
        P.check_compatible(like, tree)
    return tree, dict(payload.get("meta", {}))
