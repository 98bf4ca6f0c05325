"""Template mixtures in a task bank: the template bank is the backbone, a task is its mixture, BN and head.

`train_source` trains templates, adapters and one source task; `adapt` adds a new task on the frozen
templates (its mixture started from the source task's) and exports that task's private subtree to one
bank file tagged with the shared backbone it fits. `adapt_task` is both as a bank adapter
(`modular.adapters`, method 'mixture_weights'): its `prepare` trains the template bank on an experiment's
source data once, and each task is then adapted on it.
"""
from __future__ import annotations

import time
from typing import Mapping

import ml_collections

from modular import backbone as backbone_lib, bank, checkpoint, data, params as P, supervised, train
from modular.methods.templates.multitask import Recipe, evaluate, train_tasks
from modular.methods.templates.transfer import new_task_start, transfer_rules, with_mixture
from modular.models import isometric
from modular.projection.phases import Phase, phase

SOURCE_TASK = "task0"
# What a new task trains on frozen templates, as rules on the single-task isometric model's paths (the
# projection's model): the mixture weights, the BN scale and bias, the head.
TRANSFER_RULES = ((r".*/mixture", 1.0), (r".*/bn[^/]*/(scale|bias)", 1.0), (r"head/.*", 1.0), (".*", 0.0))


def train_source(cfg, ds: data.Dataset, *, optim_cfg, num_steps: int, batch_size: int, seed: int,
                 mixture_lr_mult: float, entropy_weight: float, workdir: str | None, checkpoint_every: int,
                 log_every: int) -> tuple[dict, dict, train.FitResult]:
    """(params, batch_stats, fit): templates, adapters and the source task trained on `ds` (resumes in workdir)."""
    recipe = Recipe(optim_cfg, num_steps, batch_size, seed, mixture_lr_mult, entropy_weight, workdir=workdir,
                    name="templates/bank", checkpoint_every=checkpoint_every, log_every=log_every)
    trained = train_tasks(cfg, recipe, {SOURCE_TASK: ds})
    return trained.params, trained.model_state, trained.fit


def adapt(cfg, source_params: Mapping, source_stats: Mapping, ds: data.Dataset, *, optim_cfg, num_steps: int,
          batch_size: int, seed: int, mixture_lr_mult: float, entropy_weight: float, workdir: str | None,
          bank_path: str, log_every: int, meta: Mapping) -> bank.Adapted:
    """A new task on frozen templates: its mixture weights (started from the source task's), BN and head train.

    Every target becomes the same task of the same tree shape, so all targets share one compiled step."""
    start = time.perf_counter()
    params, stats, task = new_task_start(cfg, source_params, source_stats, ds.num_classes, ds.image_shape[-1], seed)
    params = with_mixture(params, task, source_params["tasks"][SOURCE_TASK]["mixture"])
    recipe = Recipe(optim_cfg, num_steps, batch_size, seed, mixture_lr_mult, entropy_weight, workdir=workdir,
                    name="templates/mixture_weights", checkpoint_every=num_steps, log_every=log_every)
    trained = train_tasks(cfg, recipe, {task: ds}, start=(params, stats),
                          rules=transfer_rules(task, "source", mixture_lr_mult), default_mult=0.0)
    params, stats = trained.params, trained.model_state
    seconds = time.perf_counter() - start
    accuracy = evaluate(cfg, params, stats, ds, task)
    private = {"params": params["tasks"][task], "batch_stats": stats["tasks"][task]}
    file_bytes = checkpoint.export_subtree(bank_path, private, backbone=params["shared"], meta=meta)
    full_model = P.nbytes(params["shared"]) + P.nbytes(private)
    return bank.Adapted(accuracy, trained.trainable, P.count(private), file_bytes, seconds, full_model,
                        resumed=trained.fit.resumed_from is not None,
                        info={"one_hotness": isometric.one_hotness(isometric.mixture_weights(params, task))})


class MixtureWeights:
    """`adapt` as a bank adapter (`modular.adapters`, method 'mixture_weights'). `backbone` is the template
    bank `prepare` trained: a `backbone.Backbone` whose `model_cfg` is the isometric model's config and whose
    classifier's variables are its params and batch_stats. Settings: `config.templates` (model, num_steps,
    transfer_steps, batch_size, mixture_lr_mult, entropy_weight), `config.optim`, `config.log_every`,
    `config.checkpoint_every`. No module serves these files from a bank yet (`server` stays empty)."""

    def __call__(self, backbone, dataset: data.Dataset, config, *, seed: int, workdir: str, bank_path: str,
                 meta: Mapping) -> bank.Adapted:
        tc, variables = config.templates, backbone.classifier.variables
        return adapt(backbone.model_cfg, variables["params"], variables["batch_stats"], dataset,
                     optim_cfg=config.optim, num_steps=tc.transfer_steps, batch_size=tc.batch_size, seed=seed,
                     mixture_lr_mult=tc.mixture_lr_mult, entropy_weight=tc.entropy_weight, workdir=workdir,
                     bank_path=bank_path, log_every=config.log_every, meta=meta)

    def prepare(self, backbone, source: data.Dataset, config, *, seed: int, workdir: str) -> backbone_lib.Backbone:
        """The template bank, trained on the experiment's `source` data (`train_source`, resumed from
        `workdir`): the backbone every task adapts on. The pretrained `backbone` is not used."""
        tc = config.templates
        print(f"[templates] training the template bank on {source.name}", flush=True)
        params, stats, fit = train_source(tc.model, source, optim_cfg=config.optim, num_steps=tc.num_steps,
                                          batch_size=tc.batch_size, seed=seed, mixture_lr_mult=tc.mixture_lr_mult,
                                          entropy_weight=tc.entropy_weight, workdir=workdir,
                                          checkpoint_every=config.checkpoint_every, log_every=config.log_every)
        # model=None: the multi-task template network is built from `model_cfg` by whoever applies it
        classifier = supervised.Classifier(model=None, variables={"params": params, "batch_stats": stats}, fit=fit)
        return backbone_lib.Backbone(classifier=classifier, model_cfg=tc.model, image_size=int(source.image_shape[0]),
                                     channels=int(source.image_shape[-1]), source=source.name, path=workdir)

    @staticmethod
    def _model(config) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(config.templates.model.to_dict(), name="isometric"))

    def prepare_phases(self, config) -> list[Phase]:
        tc = config.templates
        return [phase(config, "template bank", model=self._model(config), batch_size=tc.batch_size,
                      steps=tc.num_steps)]

    def phases(self, config) -> list[Phase]:
        tc = config.templates
        return [phase(config, "mixture weights", model=self._model(config), batch_size=tc.batch_size,
                      steps=tc.transfer_steps, rules=TRANSFER_RULES)]


adapt_task = MixtureWeights()
