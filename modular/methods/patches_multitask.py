"""Multi-task patches: one shared backbone, a private patch + head per task, all trained at once; and
serving a batch whose examples belong to different tasks in one jitted call.

Parameters are {'shared': backbone, 'tasks': {'task0': patch, ...}}; task i's model is the shared tree
with its patch put in place. `sharing` names what is private: 'sb' (S/B patch + head + BN statistics)
or 'head' (shared-everything but the last layer), or 'sb_shared_head' (S/B patch + BN statistics per task,
one shared last layer: the multi-resolution setting, where every "task" is one input resolution). Summing the task losses under Adam gives every task's
private parameters the same effective learning rate, however many tasks share the backbone.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from modular import data, losses, models, optim, params as P, train
from modular.methods import patches

# private part -> (the transfer mode with that patch, whether the head is private too)
SHARING = {"sb": ("sb_last", True), "head": ("last_layer", True), "sb_shared_head": ("sb_only", False)}


def _mode(sharing: str) -> tuple[str, bool]:
    if sharing not in SHARING:
        raise ValueError(f"Unknown multi-task sharing {sharing!r}; known: {', '.join(SHARING)}.")
    return SHARING[sharing]


def task_key(i: int) -> str:
    return f"task{i}"


def init_multitask(variables: Mapping, num_tasks: int, sharing: str) -> tuple[dict, dict]:
    """(params, model_state) with every task's patch starting from `variables`' own."""
    mode, private_head = _mode(sharing)
    shared, patch = patches.split_private(variables, mode, include_head=private_head)
    params = {"shared": shared, "tasks": {task_key(i): patch["params"] for i in range(num_tasks)}}
    if patches.get_mode(mode).task_bn_stats:
        state = {"tasks": {task_key(i): variables["batch_stats"] for i in range(num_tasks)}}
    else:
        state = {"shared": variables["batch_stats"]}
    return params, state


def task_variables(params: Mapping, state: Mapping, i: int) -> dict:
    stats = state["tasks"][task_key(i)] if "tasks" in state else state["shared"]
    return {"params": P.merge(params["shared"], params["tasks"][task_key(i)]), "batch_stats": stats}


def multitask_loss(model, num_tasks: int):
    """Sum of per-task cross-entropies; BN in train mode, statistics kept per task (or shared)."""
    def loss_fn(params, model_state, batch, rng):
        total, metrics, state = 0.0, {}, dict(model_state)
        for i in range(num_tasks):
            v = task_variables(params, state, i)
            logits, _, new = models.apply(model, v, batch[f"image{i}"], mode="train")
            if "tasks" in state:
                state = {"tasks": {**state["tasks"], task_key(i): new["batch_stats"]}}
            else:
                state = {"shared": new["batch_stats"]}
            total = total + losses.cross_entropy(logits, batch[f"label{i}"])
            metrics[f"accuracy{i}"] = losses.accuracy(logits, batch[f"label{i}"])
        return total, (state, metrics)
    return loss_fn


def train_multitask(model, variables: Mapping, tasks: Sequence[data.Dataset], sharing: str, *,
                    optim_cfg: ml_collections.ConfigDict, num_steps: int, batch_size: int, seed: int = 0,
                    workdir: str | None = None, log_every: int = 50, verbose: bool = True) -> tuple[dict, dict]:
    """Train the shared backbone and every task's private part simultaneously; returns (params, state)."""
    classes = {ds.num_classes for ds in tasks}
    if len(classes) != 1:
        raise ValueError(f"Multi-task patches need tasks with one class count (to stack heads); got {sorted(classes)}.")
    params, state = init_multitask(variables, len(tasks), sharing)
    cfg = optim.override(optim_cfg, lr_mults=[], default_mult=1.0)
    tx = optim.build(cfg, params, num_steps)

    def batch_fn(step):
        out = {}
        for i, ds in enumerate(tasks):
            b = data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed + i)
            out[f"image{i}"], out[f"label{i}"] = b["image"], b["label"]
        return out

    result = train.fit(state=train.TrainState.create(params, state, tx), loss_fn=multitask_loss(model, len(tasks)),
                       tx=tx, batch_fn=batch_fn, num_steps=num_steps, seed=seed, workdir=workdir,
                       checkpoint_every=num_steps, log_every=log_every, name=f"multitask:{sharing}", verbose=verbose)
    return jax.tree.map(np.asarray, jax.device_get((result.state.params, result.state.model_state)))


def stack_patches(params: Mapping, state: Mapping, num_tasks: int) -> dict:
    """Per-task private variables stacked on a leading task axis (what mixed-task serving gathers from)."""
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
    out = {"params": stack([params["tasks"][task_key(i)] for i in range(num_tasks)])}
    if "tasks" in state:
        out["batch_stats"] = stack([state["tasks"][task_key(i)] for i in range(num_tasks)])
    return out


def make_mixed_server(model, shared_variables: Mapping):
    """jit(fn(stacked_patches, task_ids [B], images [B,...]) -> logits [B, classes]).

    Each example gathers its task's patch and runs the model with it (BN in eval mode is a per-example
    affine map, so vmapping over examples with the shared weights unbatched is exact)."""
    def one(patch, image):
        v = patches.apply_patch(shared_variables, patch)
        return models.apply(model, v, image[None], mode="eval")[0][0]

    @jax.jit
    def serve(stacked, task_ids, images):
        per_example = jax.tree.map(lambda x: jnp.take(x, task_ids, axis=0), stacked)
        return jax.vmap(one)(per_example, images)
    return serve


def shared_variables(params: Mapping, state: Mapping) -> dict:
    """The backbone every task shares (any task's statistics fill in for the shape; patches replace them)."""
    stats = state["shared"] if "shared" in state else state["tasks"][task_key(0)]
    return {"params": P.merge(params["shared"], params["tasks"][task_key(0)]), "batch_stats": stats}


def per_task_count(params: Mapping) -> int:
    return P.count(params["tasks"][task_key(0)])
