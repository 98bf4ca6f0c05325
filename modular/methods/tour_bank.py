"""The patch bank: one small file per (method, target), and serving many targets from one backbone.

`summarize` sets the bank's size against the stand-alone models it replaces. `serve_mixed` loads the
targets' S/B patches back from their bank files (each checks it fits the backbone), stacks them and
answers one batch that mixes examples of every target in a single jitted call, then checks the logits
against each target's own model run on its own examples.
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import jax
import numpy as np

from modular import checkpoint, data, models, params as P, supervised
from modular.methods import patches, patches_multitask as mt

SERVED_MODE = "sb_last"   # the patch that is served: S/B + head + BN statistics on a shared backbone


def summarize(file_bytes: Mapping[str, Mapping[str, int]], full_model_bytes: Mapping[str, int],
              paths: Mapping[str, Mapping[str, str]]) -> dict:
    """Bank bytes per method (K targets) vs K stand-alone models of that method's family, and in total."""
    per_method, files = {}, {}
    for method, per_target in file_bytes.items():
        k, stored = len(per_target), int(sum(per_target.values()))
        full = k * int(full_model_bytes[method])
        per_method[method] = dict(files=k, bytes=stored, k_full_models_bytes=full, fraction=stored / max(full, 1),
                                  full_model_bytes=int(full_model_bytes[method]))
        files.update({paths[method][t]: int(b) for t, b in per_target.items()})
    total = int(sum(m["bytes"] for m in per_method.values()))
    total_full = int(sum(m["k_full_models_bytes"] for m in per_method.values()))
    return dict(files=files, per_method=per_method, total_bytes=total, k_full_models_bytes=total_full,
                num_files=len(files), fraction=total / max(total_full, 1))


def serve_mixed(source: supervised.Classifier, bank_paths: Sequence[str], classifiers: Sequence[supervised.Classifier],
                datasets: Sequence[data.Dataset], examples_per_task: int, seed: int = 0) -> dict:
    """One jitted call on a shuffled batch of every target's test examples, each with its own bank patch."""
    model = classifiers[0].model
    shared, _ = patches.split_private(source.variables, SERVED_MODE)
    backbone_frozen = all(
        all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(shared),
                                                 jax.tree.leaves(patches.split_private(c.variables, SERVED_MODE)[0])))
        for c in classifiers)
    task_params, task_stats = {}, {}
    for i, path in enumerate(bank_paths):
        patch, _ = checkpoint.import_subtree(path, backbone=shared)   # CheckpointError if it does not fit
        task_params[mt.task_key(i)], task_stats[mt.task_key(i)] = patch["params"], patch["batch_stats"]
    params, state = {"shared": shared, "tasks": task_params}, {"tasks": task_stats}

    n = min(examples_per_task, *(len(ds.test_labels) for ds in datasets))
    images = np.concatenate([ds.test_images[:n] for ds in datasets])
    labels = np.concatenate([ds.test_labels[:n] for ds in datasets])
    ids = np.repeat(np.arange(len(datasets)), n)
    order = np.random.default_rng(seed).permutation(len(ids))
    serve = mt.make_mixed_server(model, mt.shared_variables(params, state))
    logits = np.asarray(serve(mt.stack_patches(params, state, len(datasets)), ids[order], images[order]))

    own = jax.jit(lambda v, x: models.apply(model, v, x, mode="eval")[0])   # one compile: same shapes per task
    separate = np.concatenate([np.asarray(own(c.variables, ds.test_images[:n]))
                               for c, ds in zip(classifiers, datasets)])[order]
    return dict(batch=int(len(ids)), tasks=[ds.name for ds in datasets], examples_per_task=int(n),
                bank_files=[os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p) for p in bank_paths],
                accuracy=float(np.mean(logits.argmax(-1) == labels[order])),
                max_abs_diff_vs_per_task_calls=float(np.max(np.abs(logits - separate))),
                backbone_frozen_in_every_patch=bool(backbone_frozen),
                shared_params=P.count(shared), patch_params=P.count(task_params[mt.task_key(0)]))
