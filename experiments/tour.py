"""The tour: pretrain one backbone, adapt it to several targets with every method, compare on one leaderboard.

Methods (each is its paper's own public `adapt`): Linear (last layer), S/B patch + head and full fine-tuning
(model patches), mixture weights on frozen templates (template mixtures) and Head2Toe (feature selection on
the frozen backbone). Every task-private subtree goes to WORKDIR/bank as a small file tagged with the
backbone it fits; the S/B patches are then served together, one mixed-task batch in one jitted call.
Compatible components (recombining one network's extractor with another's head) close it.
"""
from __future__ import annotations

import os

import ml_collections

from modular import bank, data, optim, reporting, supervised
from modular.data import vtab_like
from modular.methods import compat, head2toe, patches, templates
from modular.methods.head2toe import serving as head2toe_serving
from modular.methods.patches import serving as patches_serving
from modular.projection.phases import Phase, phase, pretrain_phases

# method -> (paper, patch mode, description)
METHODS = {
    "linear": ("patches", "last_layer", "last layer only"),
    "sb_patch": ("patches", "sb_last", "S/B patch + last layer"),
    "full_finetune": ("patches", "full", "every weight"),
    "mixture_weights": ("templates", None, "mixture weights + BN + head, templates frozen"),
    "head2toe": ("head2toe", None, "feature selection + linear head, backbone frozen"),
}


def _check(config) -> list[str]:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"Unknown or no tour method(s) {unknown}; known: {', '.join(METHODS)}.")
    if len(config.data.targets) < 1:
        raise ValueError("config.data.targets must name at least one target dataset.")
    if config.data.name in config.data.targets:
        raise ValueError(f"The source {config.data.name!r} cannot also be a target.")
    for name in config.compat.settings:
        compat.parse_setting(name)
    return list(config.methods)


def _adapter(method: str, config, workdir: str, source, src_ds):
    """fn(ds, run_dir, bank_path, meta) -> (Adapted, classifier or None): `method` on one target."""
    paper, mode, _ = METHODS[method]
    if paper == "patches":
        kw = dict(model_cfg=config.model, optim_cfg=optim.override(config.optim, lr=config.adapt.lr),
                  num_steps=config.adapt.num_steps, batch_size=config.adapt.batch_size, seed=config.seed,
                  log_every=config.log_every)
        return lambda ds, run_dir, path, meta: patches.adapt(source, ds, mode, workdir=run_dir, bank_path=path,
                                                             meta=meta, **kw)
    if paper == "templates":  # the template bank is the backbone here: train it on the source once
        tc = config.templates
        common = dict(optim_cfg=config.optim, batch_size=tc.batch_size, seed=config.seed,
                      mixture_lr_mult=tc.mixture_lr_mult, entropy_weight=tc.entropy_weight, log_every=config.log_every)
        print(f"[tour] training the template bank on {src_ds.name}", flush=True)
        params, stats, _ = templates.train_source(tc.model, src_ds, num_steps=tc.num_steps,
                                                  workdir=os.path.join(workdir, "templates_source"),
                                                  checkpoint_every=config.checkpoint_every, **common)
        return lambda ds, run_dir, path, meta: (templates.adapt(
            tc.model, params, stats, ds, num_steps=tc.transfer_steps, workdir=run_dir,
            bank_path=path, meta=meta, **common), None)
    h = config.head2toe
    return lambda ds, run_dir, path, meta: (head2toe.adapt(
        source, ds, target_size=h.target_size, fractions=h.fractions, coefs=h.coefs, lrs=h.lrs, steps=h.steps,
        folds=h.folds, seed=config.seed, bank_path=path, meta=meta), None)


def _adapt_method(method, config, workdir, source, src_ds, targets, stages) -> tuple[dict, dict]:
    """Adapt `method` to every target; returns ({target: Adapted}, {target: classifier} for patch methods)."""
    adapt = _adapter(method, config, workdir, source, src_ds)
    paper, mode, _ = METHODS[method]
    bank_dir, results, classifiers = os.path.join(workdir, bank.BANK_DIR), {}, {}
    for i, ds in enumerate(targets):
        print(f"{stages.tag} {method} -> {ds.name} ({i + 1}/{len(targets)})", flush=True)
        path = bank.task_file(bank_dir, method, ds.name)
        results[ds.name], classifiers[ds.name] = adapt(
            ds, os.path.join(workdir, "adapt", method, bank.slug(ds.name)), path,
            dict(method=method, source=src_ds.name, target=ds.name))
        r = results[ds.name]
        if paper != "templates":  # on the pretrained backbone: `experiments.predict --bank=WORKDIR` serves it
            server = (head2toe_serving if paper == "head2toe" else patches_serving).__name__
            bank.add_to_manifest(bank_dir, f"{method}:{ds.name}", dict(
                method="head2toe" if paper == "head2toe" else method, server=server, mode=mode,
                file=os.path.relpath(path, bank_dir),
                classes=[str(c) for c in range(ds.num_classes)], num_classes=ds.num_classes, accuracy=r.accuracy,
                bytes=r.file_bytes, backbone=os.path.abspath(workdir), image_size=config.data.image_size,
                channels=config.data.channels, dataset=ds.name))
        print(f"[tour] {method} -> {ds.name}: accuracy {100 * r.accuracy:.1f}%, trainable {r.trainable:,}, "
              f"bank file {r.file_bytes:,} B, {r.seconds:.1f}s", flush=True)
    return results, classifiers


def _compat(config) -> dict:
    """Compatible components: train each setting's pair (`compat.train_pair`, the compat study's training: the
    two networks' minibatches alternate), recombine extractors and heads without fine-tuning."""
    cc, d = config.compat, config.data
    ds_a, ds_b = (data.load(n, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=cc.max_train)
                  for n in (cc.task_a, cc.task_b))
    ds_a, ds_b, _ = data.align_classes(ds_a, ds_b)   # one label id = one class in both tasks
    settings, rows = {}, []
    for setting in map(compat.parse_setting, cc.settings):
        name = compat.setting_name(*setting)
        _, res = compat.train_and_evaluate(
            ds_a, ds_b, setting=setting, options=compat.default_options(), model_cfg=config.model,
            optim_cfg=config.optim, num_steps=cc.num_steps, batch_size=cc.batch_size, seed=config.seed,
            log=lambda m: print(m, flush=True))
        settings[name] = dict(compat.summary(res), chance=res["chance"])
        rows.append({c: compat.report.setting_row(name, res)[c] for c in compat.report.TABLE_COLUMNS})
    return dict(task_a=ds_a.name, task_b=ds_b.name, settings=settings, table=rows,
                recombination_accuracy={k: v["recombination_accuracy"] for k, v in settings.items()})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    methods = _check(config)
    d = config.data
    targets = [vtab_like.load_task(name, image_size=d.image_size, channels=d.channels, seed=config.seed,
                                   max_train=d.max_train_target, max_test=d.get("max_test_target"), source=d.name)
               for name in d.targets]
    # Stacking patches needs one head shape: every target with the same class count.
    serve = "sb_patch" in methods and len(targets) > 1 and len({ds.num_classes for ds in targets}) == 1
    stages = reporting.Stages([f"pretrain the backbone on {d.name}"]
                              + [f"{m}: {METHODS[m][2]}, on {len(targets)} targets" for m in methods]
                              + ["patch bank: export sizes vs full models"]
                              + (["mixed-task batch: every target's S/B patch in one jitted call"] if serve else [])
                              + [f"compatible components: {' vs '.join(config.compat.settings)}"], tag="tour")
    stages.next("pretrain")
    source, src_ds = supervised.pretrained_backbone(config, workdir)
    source_accuracy = source.accuracy(src_ds.test_images, src_ds.test_labels)
    print(f"[tour] source {src_ds.name}: test accuracy {100 * source_accuracy:.1f}%", flush=True)
    adapted, classifiers = {}, {}
    for method in methods:
        stages.next(method)
        adapted[method], classifiers[method] = _adapt_method(method, config, workdir, source, src_ds, targets, stages)

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
        served = patches.serve_mixed(source, [paths["sb_patch"][ds.name] for ds in targets],
                                     [classifiers["sb_patch"][ds.name] for ds in targets], targets,
                                     config.serve.examples_per_task, config.seed)
        print(f"[tour] mixed batch of {served['batch']} examples from {len(targets)} targets: accuracy "
              f"{100 * served['accuracy']:.1f}%, max |logit diff| vs per-task calls "
              f"{served['max_abs_diff_vs_per_task_calls']:.2e}", flush=True)
    stages.next("compat")
    compat_results = _compat(config)

    rows = bank.leaderboard(adapted, [ds.name for ds in targets], {m: METHODS[m][2] for m in methods})
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
    a, tc, cc, targets = config.adapt, config.templates, config.compat, list(config.data.targets)
    out = pretrain_phases(config)
    method_modes = {method: mode for method, (paper, mode, _) in METHODS.items() if paper == "patches"}
    for method, mode in method_modes.items():
        if method in config.methods:
            out += [phase(config, f"{method} on {t}", data=t, batch_size=a.batch_size, steps=a.num_steps,
                          rules=patches.lr_rules(mode)) for t in targets]
    if "mixture_weights" in config.methods:
        model = ml_collections.ConfigDict(dict(tc.model.to_dict(), name="isometric"))
        out.append(phase(config, "template bank", model=model, batch_size=tc.batch_size, steps=tc.num_steps))
        out += [phase(config, f"mixture weights on {t}", model=model, data=t, batch_size=tc.batch_size,
                      steps=tc.transfer_steps, rules=patches.lr_rules("mixture")) for t in targets]
    out.append(phase(config, "compat network pairs", data=cc.task_a, batch_size=cc.batch_size, steps=cc.num_steps,
                     repeats=2 * len(cc.settings)))
    return out
