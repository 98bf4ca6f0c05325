"""Mixed-task serving: one batch whose examples belong to different tasks, answered in one jitted call.
`load_task` serves a patch file of a bank (`modular.bank.load_served`); `serve_mixed` serves freshly adapted
patch files in one mixed batch (`modular.bank.serve_mixed`).

Each example gathers its task's patch from patches stacked on a leading task axis and runs the shared
backbone with it. BN in eval mode is a per-example affine map, so vmapping over examples with the shared
weights unbatched is exact: the logits equal each task's own model run on its own examples.
"""
from __future__ import annotations

import functools
import os
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular import bank, checkpoint, data, models, params as P, rng, supervised, train
from modular.methods.patches.modes import apply_patch, import_patch, split_private
from modular.methods.patches.multitask import task_key, task_variables
from modular.methods.patches.transfer import eval_logits, target_start

SERVED_MODE = "sb_last"   # the patch a bank serves: S/B + head + BN statistics on a shared backbone


def stack_patches(params: Mapping, state: Mapping, num_tasks: int) -> dict:
    """Per-task private variables stacked on a leading task axis (what mixed-task serving gathers from)."""
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
    out = {"params": stack([params["tasks"][task_key(i)] for i in range(num_tasks)])}
    if "tasks" in state:
        out["batch_stats"] = stack([state["tasks"][task_key(i)] for i in range(num_tasks)])
    return out


def shared_variables(params: Mapping, state: Mapping) -> dict:
    """The backbone every task shares (any task's statistics fill in for the shape; patches replace them)."""
    stats = state["shared"] if "shared" in state else state["tasks"][task_key(0)]
    return {"params": P.merge(params["shared"], params["tasks"][task_key(0)]), "batch_stats": stats}


def make_mixed_server(model, shared: Mapping):
    """jit(fn(stacked_patches, task_ids [B], images [B,...]) -> logits [B, classes]) on the `shared` variables."""
    def one(patch, image):
        return models.apply(model, apply_patch(shared, patch), image[None], mode="eval")[0][0]

    @jax.jit
    def serve(stacked, task_ids, images):
        per_example = jax.tree.map(lambda x: jnp.take(x, task_ids, axis=0), stacked)
        return jax.vmap(one)(per_example, images)
    return serve


def serve_mixed_batch(model, params: Mapping, state: Mapping, datasets: Sequence[data.Dataset], *,
                      examples_per_task: int, seed: int = 0, references: Sequence[Mapping] | None = None) -> dict:
    """One jitted call on a shuffled batch of every task's test examples, each with its own patch, checked
    against each task's own model (`references`, default its variables in params/state) on its own examples."""
    n = min(examples_per_task, *(len(ds.test_labels) for ds in datasets))
    images = np.concatenate([ds.test_images[:n] for ds in datasets])
    labels = np.concatenate([ds.test_labels[:n] for ds in datasets])
    ids = np.repeat(np.arange(len(datasets)), n)
    order = np.random.default_rng(rng.seed(seed, "mixed batch order")).permutation(len(ids))
    serve = make_mixed_server(model, shared_variables(params, state))
    logits = np.asarray(serve(stack_patches(params, state, len(datasets)), ids[order], images[order]))
    references = references or [task_variables(params, state, i) for i in range(len(datasets))]
    separate = np.concatenate([train.predict(eval_logits(model), v, ds.test_images[:n])
                               for v, ds in zip(references, datasets)])[order]
    return dict(batch=int(len(ids)), examples_per_task=int(n),
                accuracy=float(np.mean(logits.argmax(-1) == labels[order])),
                max_abs_diff_vs_per_task_calls=float(np.max(np.abs(logits - separate))))


def serve_mixed(source: supervised.Classifier, bank_paths: Sequence[str], classifiers: Sequence[supervised.Classifier],
                datasets: Sequence[data.Dataset], examples_per_task: int, seed: int = 0) -> dict:
    """Serve the bank's S/B patch files (each checked to fit the source backbone) in one mixed batch,
    checked against each target's trained classifier."""
    shared, _ = split_private(source.variables, SERVED_MODE)
    backbone_frozen = all(
        all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(shared),
                                                 jax.tree.leaves(split_private(c.variables, SERVED_MODE)[0])))
        for c in classifiers)
    task_params, task_stats = {}, {}
    for i, path in enumerate(bank_paths):
        patch, _ = checkpoint.import_subtree(path, backbone=shared)   # CheckpointError if it does not fit
        task_params[task_key(i)], task_stats[task_key(i)] = patch["params"], patch["batch_stats"]
    params, state = {"shared": shared, "tasks": task_params}, {"tasks": task_stats}
    served = serve_mixed_batch(classifiers[0].model, params, state, datasets, examples_per_task=examples_per_task,
                               seed=seed, references=[c.variables for c in classifiers])
    return dict(served, tasks=[ds.name for ds in datasets],
                bank_files=[os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p in bank_paths],
                backbone_frozen_in_every_patch=bool(backbone_frozen),
                shared_params=P.count(shared), patch_params=P.count(task_params[task_key(0)]))


def load_task(entry: Mapping, bank_dir: str, backbone, *, allow_other_weights: bool = False) -> bank.ServedTask:
    """A bank's patch file (entry: file, mode, num_classes, backbone) on its backbone. Patches of one mode and
    class count on one backbone form a group: a mixed batch of them runs in one jitted call."""
    mode, num_classes = entry["mode"], int(entry["num_classes"])
    model, start = target_start(backbone.classifier, backbone.model_cfg, num_classes,
                                (backbone.image_size, backbone.image_size, backbone.channels), seed=0)
    variables = import_patch(os.path.join(bank_dir, entry["file"]), start, mode,
                             allow_other_weights=allow_other_weights)
    return bank.ServedTask(logits=lambda images: np.asarray(train.predict(eval_logits(model), variables, images)),
                           group=(entry["backbone"], mode, num_classes),
                           serve_group=functools.partial(_serve_group, model, start, mode), payload=variables)


def _serve_group(model, start: Mapping, mode: str, members: Sequence[bank.ServedTask], ids, images) -> np.ndarray:
    patch_of = [split_private(m.payload, mode)[1] for m in members]
    stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *patch_of)
    return np.asarray(make_mixed_server(model, start)(stacked, np.asarray(ids), images))
