"""A saved backbone, loaded back: the model a pretrain run (or the tour) trained, from its workdir.

Adapting to new data starts from a trained classifier; a run's workdir already holds everything needed
(`config.json` for the architecture and input size, orbax checkpoints for the weights), so a backbone is
named by that directory. The classifier's own class count is read from its checkpointed head.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from modular import checkpoint, models, params as P, supervised

CHECKPOINTS = ("pretrain/checkpoints", "checkpoints")   # where pretrain and tour runs keep the backbone's


@dataclasses.dataclass
class Backbone:
    """A loaded classifier plus what adapting needs to know about its input."""
    classifier: supervised.Classifier
    model_cfg: ml_collections.ConfigDict
    image_size: int
    channels: int
    source: str          # the dataset it was trained on
    path: str            # the workdir it came from


def _checkpoint_dir(workdir: str) -> str:
    for rel in CHECKPOINTS:
        path = os.path.join(workdir, rel)
        if os.path.isdir(path) and any(d.isdigit() for d in os.listdir(path)):
            return path
    raise checkpoint.CheckpointError(f"Backbone {workdir} holds no checkpoint (looked in "
                                     f"{', '.join(CHECKPOINTS)}); give the workdir of a finished pretrain run.")


def load(path: str) -> Backbone:
    """The backbone saved in a pretrain (or tour) run's workdir; one sentence if it is not there or broken."""
    workdir = os.path.abspath(path)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise checkpoint.CheckpointError(f"Backbone {path} has no config.json; give the workdir of a pretrain run.")
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    directory = _checkpoint_dir(workdir)
    with ocp.CheckpointManager(directory) as mngr:
        step = mngr.latest_step()
        try:
            state = mngr.restore(step, args=ocp.args.StandardRestore())
        except Exception as e:  # orbax raises many types; the user needs one sentence
            raise checkpoint.CheckpointError(f"Backbone checkpoint step {step} in {directory} could not be read "
                                             f"({type(e).__name__}).") from None
    params = jax.tree.map(np.asarray, state["params"])
    try:
        num_classes = int(np.shape(params["head"]["classifier"]["kernel"])[-1])
    except (KeyError, TypeError):
        raise checkpoint.CheckpointError(f"Backbone {path} is not a classifier with a head (no "
                                         f"head/classifier/kernel in its checkpoint).") from None
    model = models.build(config.model, num_classes)
    d = config.data
    expected = models.init(model, jax.random.key(0), (1, d.image_size, d.image_size, d.channels))
    variables = {"params": params, **jax.tree.map(np.asarray, dict(state.get("model_state") or {}))}
    P.check_compatible(expected, variables)
    return Backbone(classifier=supervised.Classifier(model=model, variables=variables, fit=None),
                    model_cfg=config.model, image_size=int(d.image_size), channels=int(d.channels),
                    source=str(d.name), path=workdir)
