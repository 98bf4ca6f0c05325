"""The tour: pretrain one backbone, adapt it to several targets with every method, compare on one leaderboard.

Methods: Linear (last layer), S/B patch + head and full fine-tuning (model patches), mixture weights on frozen
templates (template mixtures) and Head2Toe (feature selection on the frozen backbone). Every task-private
subtree goes to WORKDIR/bank as a small file tagged with the backbone it fits; the S/B patches are then served
together, one mixed-task batch in one jitted call. Compatible components (recombining one network's extractor
with another's head) close it. Each method is the adapter registered under its name and compatible components
the study registered as 'compat' (`modular.adapters`: their `prepare`, `phases` and the bank's server hooks),
so this module imports no paper.
"""
from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections

from modular import adapters, backbone as backbone_lib, bank, reporting, supervised
from modular.data import vtab_like
from modular.projection.phases import Phase, pretrain_phases

# method -> description; each is the adapter registered under its name (modular.adapters)
METHODS = {
    "linear": "last layer only",
    "sb_patch": "S/B patch + last layer",
    "full_finetune": "every weight",
    "mixture_weights": "mixture weights + BN + head, templates frozen",
    "head2toe": "feature selection + linear head, backbone frozen",
}
SERVED = "sb_patch"     # the method whose bank files are served together in one mixed-task batch
STUDY = "compat"        # the study that closes the tour (modular.adapters.study), reading config.compat


def _check(config) -> list[str]:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"Unknown or no tour method(s) {unknown}; known: {', '.join(METHODS)}.")
    if len(config.data.targets) < 1:
        raise ValueError("config.data.targets must name at least one target dataset.")
    if config.data.name in config.data.targets:
        raise ValueError(f"The source {config.data.name!r} cannot also be a target.")
    adapters.check_study(STUDY, config)
    return list(config.methods)


def _adapt_method(method, config, workdir, source: backbone_lib.Backbone, src_ds, targets, stages) -> dict:
    """Adapt `method` to every target on the backbone its adapter prepares; returns {target: Adapted}."""
    prepared = adapters.prepare(method, source, src_ds, config, seed=config.seed,
                                workdir=os.path.join(workdir, "prepare", method))
    bank_dir, results = os.path.join(workdir, bank.BANK_DIR), {}
    for i, ds in enumerate(targets):
        print(f"{stages.tag} {method} -> {ds.name} ({i + 1}/{len(targets)})", flush=True)
        path = bank.task_file(bank_dir, method, ds.name)
        r = results[ds.name] = adapters.adapt(
            method, prepared, ds, config, seed=config.seed,
            workdir=os.path.join(workdir, "adapt", method, bank.slug(ds.name)), bank_path=path,
            meta=dict(method=method, source=src_ds.name, target=ds.name))
        if r.server and prepared is source:  # on the pretrained backbone: `experiments.predict --bank=WORKDIR`
            entry = dict(method=method, server=r.server, mode=None, file=os.path.relpath(path, bank_dir),
                         classes=[str(c) for c in range(ds.num_classes)], num_classes=ds.num_classes,
                         accuracy=r.accuracy, bytes=r.file_bytes, backbone=source.path,
                         image_size=source.image_size, channels=source.channels, dataset=ds.name)
            entry.update(r.entry)
            bank.add_to_manifest(bank_dir, f"{method}:{ds.name}", entry)
        print(f"[tour] {method} -> {ds.name}: accuracy {100 * r.accuracy:.1f}%, trainable {r.trainable:,}, "
              f"bank file {r.file_bytes:,} B, {r.seconds:.1f}s", flush=True)
    return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    methods = _check(config)
    d = config.data
    targets = [vtab_like.load_task(name, image_size=d.image_size, channels=d.channels, seed=config.seed,
                                   max_train=d.max_train_target, max_test=d.get("max_test_target"), source=d.name)
               for name in d.targets]
    # Stacking patches needs one head shape: every target with the same class count.
    serve = SERVED in methods and len(targets) > 1 and len({ds.num_classes for ds in targets}) == 1
    stages = reporting.Stages([f"pretrain the backbone on {d.name}"]
                              + [f"{m}: {METHODS[m]}, on {len(targets)} targets" for m in methods]
                              + ["patch bank: export sizes vs full models"]
                              + (["mixed-task batch: every target's S/B patch in one jitted call"] if serve else [])
                              + [f"compatible components: {' vs '.join(config.compat.settings)}"], tag="tour")
    stages.next("pretrain")
    classifier, src_ds = supervised.pretrained_backbone(config, workdir)
    source_accuracy = classifier.accuracy(src_ds.test_images, src_ds.test_labels)
    print(f"[tour] source {src_ds.name}: test accuracy {100 * source_accuracy:.1f}%", flush=True)
    source = backbone_lib.Backbone(classifier=classifier, model_cfg=config.model, image_size=int(d.image_size),
                                   channels=int(d.channels), source=src_ds.name, path=os.path.abspath(workdir))
    adapted = {}
    for method in methods:
        stages.next(method)
        adapted[method] = _adapt_method(method, config, workdir, source, src_ds, targets, stages)

    stages.next("bank")
    bank_dir = os.path.join(workdir, "bank")
    paths = {m: {ds.name: bank.task_file(bank_dir, m, ds.name) for ds in targets} for m in methods}
    summary = bank.summarize({m: {t: r.file_bytes for t, r in per.items()} for m, per in adapted.items()},
                             {m: next(iter(per.values())).full_model_bytes for m, per in adapted.items()}, paths)
    summary["files"] = {os.path.relpath(p, workdir): b for p, b in summary["files"].items()}
    print(reporting.format_table([dict(method=m, **v) for m, v in summary["per_method"].items()],
                                 title=f"patch bank under {bank_dir}: {summary['num_files']} files, "
                                       f"{summary['total_bytes']:,} B vs {summary['k_full_models_bytes']:,} B for as "
                                       f"many full models"), flush=True)
    served = None
    if serve:
        stages.next("serve")
        served = bank.serve_mixed([adapted[SERVED][ds.name] for ds in targets],
                                  [paths[SERVED][ds.name] for ds in targets], targets, classifier,
                                  examples_per_task=config.serve.examples_per_task, seed=config.seed)
        print(f"[tour] mixed batch of {served['batch']} examples from {len(targets)} targets: accuracy "
              f"{100 * served['accuracy']:.1f}%, max |logit diff| vs per-task calls "
              f"{served['max_abs_diff_vs_per_task_calls']:.2e}", flush=True)
    stages.next("compat")
    compat_results = adapters.study(STUDY)(config, seed=config.seed, log=lambda m: print(m, flush=True))

    rows = bank.leaderboard(adapted, [ds.name for ds in targets], {m: METHODS[m] for m in methods})
    columns = ["method", "mean_acc"] + [ds.name for ds in targets] + [
        "trainable_per_task", "stored_params_per_task", "stored_bytes_per_task", "fraction_of_full_model",
        "adapt_seconds_per_task"]
    print(reporting.format_table(rows, columns, title=f"the tour: {src_ds.name} -> {', '.join(d.targets)} "
                                                      f"(test accuracy %, per-task cost)"), flush=True)
    print(reporting.format_table(compat_results["table"], title=f"compatible components: recombination accuracy "
                                 f"(%), a={compat_results['task_a']} b={compat_results['task_b']}"), flush=True)
    plot = reporting.accuracy_vs_params_plot(
        workdir, "tour_accuracy_vs_params.png", {r["method"]: (r["stored_params_per_task"], r["mean_acc"]) for r in rows},
        xlabel="stored task-private parameters per task (log)", ylabel="mean target test accuracy (%)",
        title="the tour: accuracy vs what each task stores")
    return dict(
        source=src_ds.name, source_accuracy=source_accuracy, targets=[ds.name for ds in targets], methods=methods,
        leaderboard=rows, accuracy={r["method"]: r["mean_acc"] / 100 for r in rows},
        per_target={m: {t: r.accuracy for t, r in per.items()} for m, per in adapted.items()},
        details={m: {t: dict(trainable=r.trainable, stored=r.stored, file_bytes=r.file_bytes, seconds=r.seconds,
                             full_model_bytes=r.full_model_bytes, resumed=r.resumed, **r.info)
                     for t, r in per.items()} for m, per in adapted.items()},
        bank=summary, mixed_batch_serving=served, compat=compat_results, stage_seconds=stages.done(), plots=[plot])


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = "Head2Toe heads on cached features; evaluation; serving"


def phases(config) -> list[Phase]:
    """Pretraining, each method's `prepare` and its adaptation on every target, the closing study."""
    out = pretrain_phases(config)
    for method in config.methods:
        out += adapters.prepare_phases(method, config)
        for t in config.data.targets:  # the adapter's phases of one task, on target t
            task_config = copy.deepcopy(config)
            with task_config.unlocked():
                task_config.method, task_config.data.name = method, t
            out += [dataclasses.replace(p, name=f"{p.name} on {t}") for p in adapters.phases(method, task_config)]
    return out + adapters.study_phases(STUDY, config)
