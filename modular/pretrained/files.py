"""Reading weight files: torch state dicts, `.npz` archives, flax msgpack files and this library's orbax
checkpoints, each into a flat `{name: numpy array}` (torch names, npz names, or `/`-joined variable paths)."""
from __future__ import annotations

import os

import numpy as np

TORCH_SUFFIXES = (".pth", ".pt", ".bin")


class WeightsFileError(ValueError):
    """A weights file is missing, unreadable or of a kind this library does not read."""


def read_torch(path: str) -> dict[str, np.ndarray]:
    """A torch state dict (or a checkpoint dict holding one under 'state_dict' or 'model') as numpy arrays."""
    try:
        import torch
    except ImportError:
        raise WeightsFileError(f"Reading {path} needs torch (pip install torch), which is not installed.") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file; the user needs one sentence
        raise WeightsFileError(f"{path} is not a readable torch file ({type(e).__name__}).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise WeightsFileError(f"{path} holds no state dict of tensors.")
    return {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
            for k, v in state.items()}


def read_npz(path: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:
        raise WeightsFileError(f"{path} is not a readable .npz file ({type(e).__name__}).") from None


def _variables(tree) -> dict[str, np.ndarray]:
    """A library tree ({'params': ..., 'batch_stats'/'model_state': ...} or bare params) as flat variables."""
    from modular import params as P
    if not isinstance(tree, dict):
        raise WeightsFileError("holds no parameter tree")
    if "params" not in tree:
        tree = {"params": tree}
    state = tree.get("model_state") or {k: v for k, v in tree.items() if k not in ("params", "opt_state", "step")}
    flat = P.flatten({"params": tree["params"], **{k: v for k, v in dict(state).items() if k != "params"}})
    return {k: np.asarray(v) for k, v in flat.items()}


def read_msgpack(path: str) -> dict[str, np.ndarray]:
    from flax import serialization
    try:
        with open(path, "rb") as f:
            tree = serialization.msgpack_restore(f.read())
        return _variables(tree)
    except Exception as e:
        raise WeightsFileError(f"{path} is not a flax msgpack file of a parameter tree ({type(e).__name__}).") from None


def read_orbax(path: str) -> dict[str, np.ndarray]:
    """The newest checkpoint of a library workdir (its pretrain/ or own checkpoints) or checkpoint folder."""
    import orbax.checkpoint as ocp
    candidates = [path, os.path.join(path, "pretrain", "checkpoints"), os.path.join(path, "checkpoints")]
    directory = next((d for d in candidates if os.path.isdir(d) and any(s.isdigit() for s in os.listdir(d))), None)
    if directory is None:
        raise WeightsFileError(f"{path} is a folder without orbax checkpoints (looked in it, pretrain/checkpoints "
                               f"and checkpoints).")
    try:
        with ocp.CheckpointManager(directory) as mngr:
            state = mngr.restore(mngr.latest_step(), args=ocp.args.StandardRestore())
    except Exception as e:
        raise WeightsFileError(f"The checkpoint in {directory} could not be read ({type(e).__name__}).") from None
    return _variables(dict(state))


def read(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """(kind, flat arrays) of the weights at `path`; kind is 'torch', 'npz' or 'library'."""
    if not os.path.exists(path):
        raise WeightsFileError(f"The weights file {path} does not exist.")
    if os.path.isdir(path):
        return "library", read_orbax(path)
    if path.endswith(TORCH_SUFFIXES):
        return "torch", read_torch(path)
    if path.endswith(".npz"):
        return "npz", read_npz(path)
    if path.endswith(".msgpack"):
        return "library", read_msgpack(path)
    raise WeightsFileError(f"{path} is not a weights file this library reads (.pth/.pt/.bin torch state dicts, "
                           f".npz, .msgpack, or an orbax checkpoint folder).")
