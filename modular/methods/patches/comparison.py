"""The paper's multi-task comparison (Sec. 3.2, Table 3): per-task patches on one shared backbone vs
independent models.

Every sharing scheme trains all tasks at once from the source backbone; independent models fine-tune
every weight per task. Every row chooses its learning rate from the same grid on validation splits of the
tasks' training data (a sharing scheme by its mean validation accuracy over the tasks, an independent model
by its own task's), then retrains on all the training data at that rate and reads the test sets once. Rows
report each task's test accuracy, the mean, the chosen rate(s) and the parameters stored per task and in
total (BN statistics counted wherever a task keeps its own); the S/B patches are also served together in
one mixed-task batch.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from modular import data, optim, params as P, protocol, supervised
from modular.methods.patches import sweep as sweeps
from modular.methods.patches.multitask import per_task_count, task_key, task_variables, train_multitask
from modular.methods.patches.serving import serve_mixed_batch
from modular.methods.patches.transfer import accuracy, target_start, transfer

ROW_NAMES = {"sb": "multitask_sb_patch", "head": "multitask_shared_all_but_head",
             "head_bn_stats": "multitask_shared_all_but_head_and_bn_stats"}
SERVED_EXAMPLES_PER_TASK = 64


def _row(setting: str, tasks: Sequence[data.Dataset], accuracies: Sequence[float], per_task: int, total: int,
         lr) -> dict:
    return dict(setting=setting, **{ds.name: a for ds, a in zip(tasks, accuracies)}, mean=float(np.mean(accuracies)),
                per_task_params=per_task, total_params=total, lr=lr)


def compare_multitask(source: supervised.Classifier, tasks: Sequence[data.Dataset], sharings: Sequence[str], *,
                      independent: bool, model_cfg, optim_cfg, lrs: Sequence[float], val_fraction: float,
                      num_steps: int, batch_size: int, seed: int, workdir: str, log_every: int,
                      sequential: bool = True) -> dict:
    """{'tasks', 'table' (one row per sharing scheme, then independent models; each with its chosen 'lr'),
    'grids' ({row: [{'setting', 'validation'}]}; independent models: {row: {task: [...]}}),
    'mixed_batch_serving'}.

    Final runs go to workdir/multitask/SHARING_lrLR and workdir/independent/taskI_lrLR (each resumes there)."""
    model, start = target_start(source, model_cfg, tasks[0].num_classes, tasks[0].image_shape, seed)
    halves = [protocol.validation_split(ds, val_fraction, seed) for ds in tasks]
    fits, vals = [f for f, _ in halves], [v for _, v in halves]
    rows, served, grids = [], {}, {}
    for sharing in sharings:
        name = ROW_NAMES.get(sharing, f"multitask_{sharing}")
        swept = sweeps.sweep_multitask(model, start, fits, vals, sharing, lrs, optim_cfg=optim_cfg,
                                       num_steps=num_steps, batch_size=batch_size, seed=seed, sequential=sequential)
        lr, grids[name] = sweeps.choose_rate(lrs, swept["validation"])
        params, state = train_multitask(model, start, tasks, sharing, optim_cfg=optim.override(optim_cfg, lr=lr),
                                        num_steps=num_steps, batch_size=batch_size, seed=seed, log_every=log_every,
                                        workdir=os.path.join(workdir, "multitask", f"{sharing}_lr{lr:g}"))
        accuracies = [accuracy(model, task_variables(params, state, i), ds.test_images, ds.test_labels)
                      for i, ds in enumerate(tasks)]
        per_task = per_task_count(params, state)
        shared = P.count(params["shared"]) + P.count(state.get("shared", {}))
        rows.append(_row(name, tasks, accuracies, per_task, shared + per_task * len(tasks), lr))
        print(f"[patches] seed {seed} {name}: lr {lr:g} (validation), mean test accuracy "
              f"{100 * rows[-1]['mean']:.2f}%", flush=True)
        if sharing == "sb":
            served = serve_mixed_batch(model, params, state, tasks, examples_per_task=SERVED_EXAMPLES_PER_TASK,
                                       seed=seed)
    if independent:
        accuracies, chosen, grids["independent_full_models"] = [], [], {}
        for i, ds in enumerate(tasks):
            swept = sweeps.sweep(source, fits[i], vals[i], "full", lrs, model_cfg=model_cfg, optim_cfg=optim_cfg,
                                 num_steps=num_steps, batch_size=batch_size, seed=seed, sequential=sequential)
            lr, grids["independent_full_models"][ds.name] = sweeps.choose_rate(lrs, swept["validation"])
            clf, _ = transfer(source, ds, "full", model_cfg=model_cfg, optim_cfg=optim.override(optim_cfg, lr=lr),
                              num_steps=num_steps, batch_size=batch_size, seed=seed, log_every=log_every,
                              verbose=False, workdir=os.path.join(workdir, "independent", f"{task_key(i)}_lr{lr:g}"))
            accuracies.append(accuracy(model, clf.variables, ds.test_images, ds.test_labels))
            chosen.append(lr)
        whole = P.count(start)
        rows.append(_row("independent_full_models", tasks, accuracies, whole, whole * len(tasks), chosen))
    return dict(tasks=[ds.name for ds in tasks], table=rows, grids=grids, mixed_batch_serving=served)
