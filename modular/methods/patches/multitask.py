"""Multi-task patches: one shared backbone, a private patch (and head) per task, all trained at once.

Parameters are {'shared': backbone, 'tasks': {'task0': patch, ...}}, BN statistics {'tasks': {...}} (one
set per task) or {'shared': ...}; task i's model is the shared tree with its patch put in place.
`sharing` names what is private: 'sb' (S/B patch + head + BN statistics), 'head' (shared-everything but
the last layer), 'head_bn_stats' (the last layer and the BN statistics), 'sb_shared_head' (S/B patch + BN
statistics per task, one shared last layer: the multi-resolution setting, where every "task" is one input
resolution) or 'none' (one model for every task, statistics included). Summing the task losses under Adam
gives every task's private parameters the same effective learning rate, however many tasks share the backbone.
"""
from __future__ import annotations

import functools
from typing import Mapping, Sequence

import ml_collections

from modular import data, losses, models, params as P, train
from modular.methods.patches.modes import get_mode, split_private

# private part -> (the transfer mode with that patch, whether the head is private too)
SHARING = {"sb": ("sb_last", True), "head": ("last_layer", True), "head_bn_stats": ("last_layer_bn_stats", True),
           "sb_shared_head": ("sb_only", False), "none": ("last_layer", False)}


def _sharing_mode(sharing: str) -> tuple[str, bool]:
    """(transfer mode, private head) of a sharing scheme."""
    if sharing not in SHARING:
        raise ValueError(f"Unknown multi-task sharing {sharing!r}; known: {', '.join(SHARING)}.")
    return SHARING[sharing]


def task_key(i: int) -> str:
    return f"task{i}"


def init_multitask(variables: Mapping, num_tasks: int, sharing: str) -> tuple[dict, dict]:
    """(params, model_state) with every task's patch starting from `variables`' own."""
    mode, private_head = _sharing_mode(sharing)
    shared, patch = split_private(variables, mode, include_head=private_head)
    params = {"shared": shared}
    if patch["params"]:   # sharing 'none' has nothing private (an empty subtree would not survive optax)
        params["tasks"] = {task_key(i): patch["params"] for i in range(num_tasks)}
    if get_mode(mode).task_bn_stats:
        state = {"tasks": {task_key(i): variables["batch_stats"] for i in range(num_tasks)}}
    else:
        state = {"shared": variables["batch_stats"]}
    return params, state


def task_variables(params: Mapping, state: Mapping, i: int) -> dict:
    """Task i's model variables: the shared tree with its patch, and its statistics."""
    stats = state["tasks"][task_key(i)] if "tasks" in state else state["shared"]
    return {"params": P.merge(params["shared"], params.get("tasks", {}).get(task_key(i), {})), "batch_stats": stats}


def per_task_count(params: Mapping, state: Mapping | None = None) -> int:
    """Values one task stores: its private parameters, plus its own BN statistics when `state` has them."""
    stats = P.count(state["tasks"][task_key(0)]) if state is not None and "tasks" in state else 0
    return P.count(params.get("tasks", {}).get(task_key(0), {})) + stats


@functools.lru_cache(maxsize=16)
def multitask_loss(model, num_tasks: int):
    """Sum of per-task cross-entropies on batch {task_key(i): {'image', 'label'}}; BN in train mode,
    statistics kept per task (or shared)."""
    def loss_fn(params, model_state, batch, key):
        total, metrics, state = 0.0, {}, dict(model_state)
        for i in range(num_tasks):
            task = task_key(i)
            logits, _, new = models.apply(model, task_variables(params, state, i), batch[task]["image"], mode="train")
            if "tasks" in state:
                state = {"tasks": {**state["tasks"], task: new["batch_stats"]}}
            else:
                state = {"shared": new["batch_stats"]}
            total = total + losses.cross_entropy(logits, batch[task]["label"])
            metrics[f"accuracy_{task}"] = losses.accuracy(logits, batch[task]["label"])
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
    named = {task_key(i): ds for i, ds in enumerate(tasks)}
    trained = train.train_subtrees(
        params, state, loss_fn=multitask_loss(model, len(tasks)), optim_cfg=optim_cfg, rules=[], default_mult=1.0,
        batch_fn=lambda step: data.multitask_batch(named, step, batch_size, seed), num_steps=num_steps, seed=seed,
        name=f"multitask:{sharing}", workdir=workdir, checkpoint_every=num_steps, log_every=log_every,
        verbose=verbose)
    return trained.params, trained.model_state
