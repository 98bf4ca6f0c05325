"""The paper's multi-task comparison: per-task patches on one shared backbone vs independent models.

Every sharing scheme trains all tasks at once from the source backbone; independent models fine-tune
every weight per task. Rows report each task's test accuracy, the mean, and the parameters stored per
task and in total (BN statistics counted wherever a task keeps its own); the S/B patches are also served
together in one mixed-task batch.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from modular import data, params as P, supervised
from modular.methods.patches.multitask import per_task_count, task_key, task_variables, train_multitask
from modular.methods.patches.serving import serve_mixed_batch
from modular.methods.patches.transfer import accuracy, target_start, transfer

ROW_NAMES = {"sb": "multitask_sb_patch", "head": "multitask_shared_all_but_head",
             "head_bn_stats": "multitask_shared_all_but_head_and_bn_stats"}
SERVED_EXAMPLES_PER_TASK = 64


def _row(setting: str, tasks: Sequence[data.Dataset], accuracies: Sequence[float], per_task: int, total: int) -> dict:
    return dict(setting=setting, **{ds.name: a for ds, a in zip(tasks, accuracies)}, mean=float(np.mean(accuracies)),
                per_task_params=per_task, total_params=total)


def compare_multitask(source: supervised.Classifier, tasks: Sequence[data.Dataset], sharings: Sequence[str], *,
                      independent: bool, model_cfg, optim_cfg, num_steps: int, batch_size: int, seed: int,
                      workdir: str, log_every: int) -> dict:
    """{'tasks', 'table' (one row per sharing scheme, then independent models), 'mixed_batch_serving'}.

    Runs go to workdir/multitask/SHARING and workdir/independent/taskI (each resumes there)."""
    model, start = target_start(source, model_cfg, tasks[0].num_classes, tasks[0].image_shape, seed)
    rows, served = [], {}
    for sharing in sharings:
        params, state = train_multitask(model, start, tasks, sharing, optim_cfg=optim_cfg, num_steps=num_steps,
                                        batch_size=batch_size, seed=seed, log_every=log_every,
                                        workdir=os.path.join(workdir, "multitask", sharing))
        accuracies = [accuracy(model, task_variables(params, state, i), ds.test_images, ds.test_labels)
                      for i, ds in enumerate(tasks)]
        per_task = per_task_count(params, state)
        shared = P.count(params["shared"]) + P.count(state.get("shared", {}))
        rows.append(_row(ROW_NAMES.get(sharing, f"multitask_{sharing}"), tasks, accuracies, per_task,
                         shared + per_task * len(tasks)))
        if sharing == "sb":
            served = serve_mixed_batch(model, params, state, tasks, examples_per_task=SERVED_EXAMPLES_PER_TASK,
                                       seed=seed)
    if independent:
        accuracies = []
        for i, ds in enumerate(tasks):
            clf, _ = transfer(source, ds, "full", model_cfg=model_cfg, optim_cfg=optim_cfg, num_steps=num_steps,
                              batch_size=batch_size, seed=seed, log_every=log_every, verbose=False,
                              workdir=os.path.join(workdir, "independent", task_key(i)))
            accuracies.append(accuracy(model, clf.variables, ds.test_images, ds.test_labels))
        whole = P.count(start)
        rows.append(_row("independent_full_models", tasks, accuracies, whole, whole * len(tasks)))
    return dict(tasks=[ds.name for ds in tasks], table=rows, mixed_batch_serving=served)
