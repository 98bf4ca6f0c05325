"""Training-state checkpoints (orbax) and portable task-private subtree files.

Training state goes through orbax's CheckpointManager (atomic, async, keeps the last few).
A task-private subtree (a patch, a head, mixture weights) exports to one small msgpack file tagged with
the structure hash of the backbone it was trained on and a fingerprint of that backbone's weights, so
loading it onto another architecture, or onto other weights of the same one, fails with one sentence
instead of silently producing garbage (a patch is only valid for the weights it was trained on).
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from modular import params as P

SUBTREE_FORMAT = "modular-subtree-v2"
READABLE_FORMATS = ("modular-subtree-v1", SUBTREE_FORMAT)   # v1 files carry no weights fingerprint


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
        folder = os.path.join(str(mngr.directory), str(step))
        earlier = [s for s in intact_steps(str(mngr.directory)) if s < step]
        fix = (f"to resume from the intact step {earlier[-1]} instead, move it away (mv {folder} {folder}.corrupt) "
               f"and run again" if earlier else "move it away or choose another --workdir to start fresh")
        raise CheckpointError(
            f"Checkpoint step {step} in {mngr.directory} is corrupt or does not fit this run's state "
            f"({type(e).__name__}); it was left untouched: {fix}.") from e
    return state, int(step)


_OS_REASONS = ("No space left on device", "Disk quota exceeded", "Read-only file system", "Permission denied",
               "Input/output error", "Stale file handle")


def intact_steps(directory: str) -> list[int]:
    """Checkpoint steps whose save completed (orbax renames a step's temporary folder only when it is whole)."""
    try:
        return sorted(int(d) for d in os.listdir(directory) if d.isdigit())
    except OSError:
        return []


def raise_save_errors(mngr: ocp.CheckpointManager, call, name: str = "train"):
    """Run `call` (a save, a wait, or the check for a background save's error); a failure becomes one
    CheckpointError sentence naming the folder, the reason and the last intact checkpoint."""
    try:
        return call()
    except Exception as e:
        text = f"{e!r} {e.__cause__!r} {e.__context__!r}"
        reason = next((r for r in _OS_REASONS if r in text), str(e).splitlines()[0][:160] if str(e) else type(e).__name__)
        steps = intact_steps(str(mngr.directory))
        last = f"step {steps[-1]} in {mngr.directory}" if steps else "none"
        raise CheckpointError(f"[{name}] saving a checkpoint to {mngr.directory} failed ({reason}); training stopped. "
                              f"Last intact checkpoint: {last}.") from None


def weights_fingerprint(tree: Mapping) -> str:
    """Identity of a tree's values (paths and bytes of every leaf): equal only for the same weights."""
    h = hashlib.sha256()
    for p, leaf in sorted(P.flatten(tree).items()):
        h.update(p.encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return h.hexdigest()[:16]


def export_subtree(path: str, subtree: Mapping, *, backbone: Mapping, meta: Mapping | None = None) -> int:
    """Write a task-private subtree tagged with its backbone's identity; returns the file size in bytes."""
    payload = {
        "format": SUBTREE_FORMAT,
        "backbone_hash": P.structure_hash(backbone),
        "backbone_weights": weights_fingerprint(backbone),
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


def import_subtree(path: str, *, backbone: Mapping, like: Mapping | None = None,
                   allow_other_weights: bool = False) -> tuple[dict, dict]:
    """Read a subtree file; check it fits `backbone` (and `like`'s shapes if given). Returns (subtree, meta).

    A file trained on other weights of the same architecture is refused unless `allow_other_weights`
    (e.g. a compatible head put on another network's extractor on purpose)."""
    if not os.path.exists(path):
        raise CheckpointError(f"Subtree file {path} does not exist.")
    try:
        with open(path, "rb") as f:
            payload = serialization.msgpack_restore(f.read())
        if not isinstance(payload, Mapping) or payload.get("format") not in READABLE_FORMATS:
            raise ValueError("unknown format tag")
        tree = P.unflatten(payload["tree"])
        meta = dict(payload.get("meta") or {})
        tagged, weights = str(payload["backbone_hash"]), payload.get("backbone_weights")
        if not all(isinstance(v, np.ndarray) or np.isscalar(v) for v in jax.tree.leaves(tree)):
            raise ValueError("a leaf is not an array")
    except Exception as e:
        raise CheckpointError(f"Subtree file {path} is corrupt or not a modular subtree file "
                              f"({type(e).__name__}: {e}).") from None
    expected = P.structure_hash(backbone)
    if tagged != expected:
        raise CheckpointError(
            f"Subtree file {path} was trained on backbone {tagged}, but this backbone is {expected}: it does not fit.")
    if weights is not None and not allow_other_weights and weights != weights_fingerprint(backbone):
        raise CheckpointError(
            f"Subtree file {path} was trained on other weights of this backbone (fingerprint {weights}, this one "
            f"{weights_fingerprint(backbone)}); pass allow_other_weights=True (experiments.predict: "
            f"--allow_other_weights) to load it anyway.")
    if like is not None:
        P.check_compatible(like, tree)
    return tree, meta
