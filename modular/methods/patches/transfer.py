"""Transfer learning with a patch: the source backbone, a fresh last layer, and only the mode's patch trains."""
from __future__ import annotations

import time
from typing import Mapping

from modular import bank, data, models, params as P, rng, supervised, train
from modular.methods.patches.modes import (check_applicable, export_patch, get_mode, import_patch, lr_rules,
                                           stored_count)


def target_start(source: supervised.Classifier, model_cfg, num_classes: int, image_shape: tuple,
                 seed: int) -> tuple:
    """(model, variables): the source's weights and statistics with a fresh last layer for the target's classes."""
    model = models.build(model_cfg, num_classes)
    fresh = models.init(model, rng.key(seed, "init", "head"), (1,) + tuple(image_shape))
    return model, P.load_matching(fresh, source.variables, dont_load=[r"[^/]+/head/.*"], require_all=True)


def eval_logits(model):
    """`fn(variables, batch) -> logits`, BN in eval mode; one object per model (`supervised.model_logits`), so
    its compilation is reused, the source classifier's evaluation included."""
    return supervised.model_logits(model, "eval")


def accuracy(model, variables: Mapping, images, labels) -> float:
    """Test accuracy with BN in eval mode (the task's own statistics where the patch holds them)."""
    return train.accuracy(eval_logits(model), variables, images, labels)


def patch_loss(model, mode: str):
    """Cross-entropy; BN in train mode (task statistics re-estimated) unless the mode keeps the source's. The
    classifier's own loss object, so full fine-tuning reuses the program that pretrained the model."""
    return supervised.classification_loss(model, "train" if get_mode(mode).task_bn_stats else "eval")


def transfer(source: supervised.Classifier, ds: data.Dataset, mode: str, *, model_cfg, optim_cfg,
             num_steps: int, batch_size: int, seed: int = 0, workdir: str | None = None,
             log_every: int = 50, verbose: bool = True) -> tuple[supervised.Classifier, int]:
    """Train `mode`'s patch on ds from the source backbone; returns (classifier, trainable param count)."""
    model, variables = target_start(source, model_cfg, ds.num_classes, ds.image_shape, seed)
    check_applicable(variables["params"], mode)
    trained = train.train_subtrees(
        *models.split_variables(variables),
        loss_fn=patch_loss(model, mode), optim_cfg=optim_cfg, rules=lr_rules(mode), default_mult=0.0,
        batch_fn=lambda step: data.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed),
        num_steps=num_steps, seed=seed, name=f"patch:{mode}", workdir=workdir, checkpoint_every=num_steps,
        log_every=log_every, show_table=True, verbose=verbose,
        # A mode with the task's own statistics re-estimates every BN layer's, frozen scale/bias or not (DW
        # + last layer, last layer + statistics); train_subtrees would otherwise keep a frozen module's.
        update_frozen_stats=get_mode(mode).task_bn_stats)
    final = {"params": trained.params, **trained.model_state}
    return supervised.Classifier(model=model, variables=final, fit=trained.fit), trained.trainable


def adapt(source: supervised.Classifier, ds: data.Dataset, mode: str, *, model_cfg, optim_cfg, num_steps: int,
          batch_size: int, seed: int, workdir: str | None, bank_path: str, log_every: int,
          meta: Mapping) -> tuple[bank.Adapted, supervised.Classifier]:
    """A transfer mode on the frozen source backbone, measured and stored: the patch file goes to bank_path."""
    start = time.perf_counter()
    clf, trainable = transfer(source, ds, mode, model_cfg=model_cfg, optim_cfg=optim_cfg, num_steps=num_steps,
                              batch_size=batch_size, seed=seed, workdir=workdir, log_every=log_every, verbose=True)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(clf.model, clf.variables, ds.test_images, ds.test_labels)
    file_bytes = export_patch(bank_path, clf.variables, mode, meta=meta)
    return bank.Adapted(test_accuracy, trainable, stored_count(clf.variables, mode), file_bytes, seconds,
                        P.nbytes(clf.variables),
                        resumed=clf.fit.resumed_from is not None), clf


def rebuilds_from_file(path: str, source: supervised.Classifier, ds: data.Dataset, mode: str,
                       expected_accuracy: float, *, model_cfg, seed: int) -> bool:
    """Whether the patch file alone rebuilds the task: loaded onto the source backbone with another fresh
    last layer and the source's statistics, it gives exactly the trained model's test accuracy."""
    model, start = target_start(source, model_cfg, ds.num_classes, ds.image_shape, rng.seed(seed, "reload"))
    rebuilt = import_patch(path, start, mode)
    return accuracy(model, rebuilt, ds.test_images, ds.test_labels) == expected_accuracy
