"""The tour: pretrain one backbone, adapt it to several targets with every method, compare on one leaderboard.

Methods (each runs the library's own code, see modular/methods/tour_adapt.py): Linear (last layer), S/B patch
+ head and full fine-tuning (model patches), mixture weights on frozen templates (template mixtures) and
Head2Toe (feature selection on the frozen backbone). Every task-private subtree goes to WORKDIR/bank as a
small file tagged with the backbone it fits; the S/B patches are then served together, one mixed-task batch
in one jitted call. Compatible components (recombining one network's extractor with another's head) close it.
"""
from __future__ import annotations

import os
import time

import ml_collections
import numpy as np

from configs import compat as compat_configs
from experiments import compat as compat_experiment
from modular import optim, reporting, supervised
from modular.methods import head2toe_suite as h2t_suite, tour_adapt, tour_bank

# method -> (library method, patch mode, description)
METHODS = {
    "linear": ("patches", "last_layer", "last layer only"),
    "sb_patch": ("patches", "sb_last", "S/B patch + last layer"),
    "full_finetune": ("patches", "full", "every weight"),
    "mixture_weights": ("templates", None, "mixture weights + BN + head, templates frozen"),
    "head2toe": ("head2toe", None, "feature selection + linear head, backbone frozen"),
}


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "-")


def _bank_path(workdir: str, method: str, target: str) -> str:
    return os.path.join(workdir, "bank", method, f"{_slug(target)}.msgpack")


def _check(config) -> list[str]:
    unknown = [m for m in config.methods if m not in METHODS]
    if unknown or not config.methods:
        raise ValueError(f"Unknown or no tour method(s) {unknown}; known: {', '.join(METHODS)}.")
    if len(config.data.targets) < 1:
        raise ValueError("config.data.targets must name at least one target dataset.")
    if config.data.name in config.data.targets:
        raise ValueError(f"The source {config.data.name!r} cannot also be a target.")
    for name in config.compat.settings:
        _compat_setting(name)
    return list(config.methods)


def _compat_setting(name: str) -> tuple[bool, bool, bool]:
    parts = set() if name == "independent" else set(name.split("+"))
    if not parts <= {"IIW", "RP", "DCC"} or (name != "independent" and not parts):
        raise ValueError(f"Unknown compat setting {name!r}; use 'independent' or a '+'-joined set of IIW, RP, DCC.")
    return "DCC" in parts, "RP" in parts, "IIW" in parts


class _Stages:
    """Prints '[tour i/n] what' as each stage starts and records the seconds each took."""

    def __init__(self, titles: list[str]):
        self.titles, self.seconds, self._i, self._t = titles, {}, 0, None

    def next(self, key: str) -> None:
        self._close()
        self._i += 1
        self._key, self._t = key, time.perf_counter()
        print(f"{self.tag} {self.titles[self._i - 1]}", flush=True)

    @property
    def tag(self) -> str:
        return f"[tour {self._i}/{len(self.titles)}]"

    def _close(self) -> None:
        if self._t is not None:
            self.seconds[self._key] = time.perf_counter() - self._t

    def done(self) -> dict:
        self._close()
        self._t = None
        return self.seconds


def _adapt_method(method, config, workdir, source, src_ds, targets, stages) -> tuple[dict, dict]:
    """Adapt `method` to every target; returns ({target: Adapted}, {target: classifier} for patch methods)."""
    family, mode, _ = METHODS[method]
    results, classifiers, meta = {}, {}, dict(method=method, source=src_ds.name)
    if family == "templates":  # the template bank is the backbone here: train it on the source once
        tc = config.templates
        print(f"[tour] training the template bank on {src_ds.name}", flush=True)
        src_params, src_stats, _ = tour_adapt.train_template_source(
            tc.model, src_ds, optim_cfg=config.optim, num_steps=tc.num_steps, batch_size=tc.batch_size,
            seed=config.seed, mixture_lr_mult=tc.mixture_lr_mult, entropy_weight=tc.entropy_weight,
            workdir=os.path.join(workdir, "templates_source"), checkpoint_every=config.checkpoint_every,
            log_every=config.log_every)
    for i, ds in enumerate(targets):
        print(f"{stages.tag} {method} -> {ds.name} ({i + 1}/{len(targets)})", flush=True)
        bank_path = _bank_path(workdir, method, ds.name)
        run_dir = os.path.join(workdir, "adapt", method, _slug(ds.name))
        meta_t = dict(meta, target=ds.name)
        if family == "patches":
            optim_cfg = optim.override(config.optim, lr=config.adapt.lr)
            results[ds.name], classifiers[ds.name] = tour_adapt.adapt_patch(
                source, ds, mode, model_cfg=config.model, optim_cfg=optim_cfg, num_steps=config.adapt.num_steps,
                batch_size=config.adapt.batch_size, seed=config.seed, workdir=run_dir, bank_path=bank_path,
                log_every=config.log_every, meta=meta_t)
        elif family == "templates":
            tc = config.templates
            results[ds.name] = tour_adapt.adapt_mixture(
                tc.model, src_params, src_stats, src_ds.num_classes, ds, optim_cfg=config.optim,
                num_steps=tc.transfer_steps, batch_size=tc.batch_size, seed=config.seed,
                mixture_lr_mult=tc.mixture_lr_mult, entropy_weight=tc.entropy_weight, workdir=run_dir,
                bank_path=bank_path, log_every=config.log_every, meta=meta_t)
        else:
            h = config.head2toe
            results[ds.name] = tour_adapt.adapt_head2toe(
                source, ds, target_size=h.target_size, fractions=h.fractions, coefs=h.coefs, lrs=h.lrs,
                steps=h.steps, folds=h.folds, seed=config.seed, bank_path=bank_path, meta=meta_t)
        r = results[ds.name]
        print(f"[tour] {method} -> {ds.name}: accuracy {100 * r.accuracy:.1f}%, trainable {r.trainable:,}, "
              f"bank file {r.file_bytes:,} B, {r.seconds:.1f}s", flush=True)
    return results, classifiers


def _leaderboard(adapted: dict, targets: list) -> list[dict]:
    rows = []
    for method, per_target in adapted.items():
        runs = [per_target[ds.name] for ds in targets]
        rows.append(dict(
            method=method, what=METHODS[method][2], mean_acc=100 * float(np.mean([r.accuracy for r in runs])),
            **{ds.name: 100 * per_target[ds.name].accuracy for ds in targets},
            trainable_per_task=int(round(np.mean([r.trainable for r in runs]))),
            stored_params_per_task=int(round(np.mean([r.stored for r in runs]))),
            stored_bytes_per_task=int(round(np.mean([r.file_bytes for r in runs]))),
            fraction_of_full_model=float(np.mean([r.file_bytes / r.full_model_bytes for r in runs])),
            adapt_seconds_per_task=float(np.mean([r.seconds for r in runs])),
            resumed=any(r.resumed for r in runs)))
    return rows


def _compat(config, workdir: str) -> dict:
    """Compatible components: train each setting's pair (compat experiment code), recombine without fine-tuning."""
    cc = config.compat
    ccfg = compat_configs.get_config("" if config.scale == "cpu" else config.scale)
    ccfg.data.update(dict(task_a=cc.task_a, task_b=cc.task_b, image_size=config.data.image_size,
                          channels=config.data.channels, max_train=cc.max_train))
    ccfg.model = ml_collections.ConfigDict(config.model.to_dict())
    ccfg.update(dict(seed=config.seed, num_steps=cc.num_steps, batch_size=cc.batch_size, log_every=config.log_every))
    ccfg.optim = ml_collections.ConfigDict(config.optim.to_dict())
    ccfg.compat.sweep = False
    ds_a, ds_b = compat_experiment.load_tasks(ccfg)
    settings, rows = {}, []
    for name in cc.settings:
        dcc, rp, iiw = _compat_setting(name)
        name = compat_experiment.setting_name(dcc, rp, iiw)
        mods, params, stats, info = compat_experiment.train_pair(ccfg, ds_a, ds_b, dcc=dcc, rp=rp, iiw=iiw,
                                                                 workdir=os.path.join(workdir, "compat"), name=name)
        res = compat_experiment.evaluate(mods, params, stats, ds_a, ds_b, info["common"])
        settings[name] = {k: res[k] for k in ("recombination_accuracy", "recombination_a_ext_b_head",
                                              "recombination_b_ext_a_head", "recombination_accuracy_train_stats",
                                              "own_accuracy", "chance")}
        settings[name]["train_seconds"] = info["train_seconds"]
        rows.append(dict(setting=name, paper=compat_experiment.PAPER_FIG2.get(name),
                         recombination=100 * res["recombination_accuracy"], a_to_b=100 * res["recombination_a_ext_b_head"],
                         b_to_a=100 * res["recombination_b_ext_a_head"], own=100 * res["own_accuracy"],
                         chance=100 * res["chance"]))
    return dict(task_a=ds_a.name, task_b=ds_b.name, settings=settings, table=rows,
                recombination_accuracy={k: v["recombination_accuracy"] for k, v in settings.items()})


def _plot(workdir: str, rows: list[dict]) -> str:
    return reporting.accuracy_vs_params_plot(
        workdir, "tour_accuracy_vs_params.png", {r["method"]: (r["stored_params_per_task"], r["mean_acc"]) for r in rows},
        xlabel="stored task-private parameters per task (log)", ylabel="mean target test accuracy (%)",
        title="the tour: accuracy vs what each task stores")


def _run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    methods = _check(config)
    targets = [h2t_suite.load_task(name, image_size=config.data.image_size, channels=config.data.channels,
                                   seed=config.seed, max_train=config.data.max_train_target,
                                   max_test=config.data.get("max_test_target"), source=config.data.name)
               for name in config.data.targets]
    # Stacking patches needs one head shape: every target with the same class count.
    serve = "sb_patch" in methods and len(targets) > 1 and len({ds.num_classes for ds in targets}) == 1
    stages = _Stages([f"pretrain the backbone on {config.data.name}"]
                     + [f"{m}: {METHODS[m][2]}, on {len(targets)} targets" for m in methods]
                     + ["patch bank: export sizes vs full models"]
                     + (["mixed-task batch: every target's S/B patch in one jitted call"] if serve else [])
                     + [f"compatible components: {' vs '.join(config.compat.settings)}"])
    stages.next("pretrain")
    source, src_ds = supervised.pretrained_backbone(config, workdir)
    source_accuracy = source.accuracy(src_ds.test_images, src_ds.test_labels)
    print(f"[tour] source {src_ds.name}: test accuracy {100 * source_accuracy:.1f}%", flush=True)
    adapted, classifiers = {}, {}
    for method in methods:
        stages.next(method)
        adapted[method], classifiers[method] = _adapt_method(method, config, workdir, source, src_ds, targets, stages)

    stages.next("bank")
    paths = {m: {ds.name: _bank_path(workdir, m, ds.name) for ds in targets} for m in methods}
    bank = tour_bank.summarize({m: {t: r.file_bytes for t, r in per.items()} for m, per in adapted.items()},
                               {m: next(iter(per.values())).full_model_bytes for m, per in adapted.items()}, paths)
    bank["files"] = {os.path.relpath(p, workdir): b for p, b in bank["files"].items()}
    print(reporting.format_table([dict(method=m, **v) for m, v in bank["per_method"].items()],
                                 title=f"patch bank under {os.path.join(workdir, 'bank')}: {bank['num_files']} files, "
                                       f"{bank['total_bytes']:,} B vs {bank['k_full_models_bytes']:,} B for as many "
                                       f"full models"), flush=True)
    served = None
    if serve:
        stages.next("serve")
        served = tour_bank.serve_mixed(source, [paths["sb_patch"][ds.name] for ds in targets],
                                       [classifiers["sb_patch"][ds.name] for ds in targets], targets,
                                       config.serve.examples_per_task, config.seed)
        print(f"[tour] mixed batch of {served['batch']} examples from {len(targets)} targets: accuracy "
              f"{100 * served['accuracy']:.1f}%, max |logit diff| vs per-task calls "
              f"{served['max_abs_diff_vs_per_task_calls']:.2e}", flush=True)
    stages.next("compat")
    compat = _compat(config, workdir)

    rows = _leaderboard(adapted, targets)
    seconds = stages.done()
    columns = ["method", "mean_acc"] + [ds.name for ds in targets] + [
        "trainable_per_task", "stored_params_per_task", "stored_bytes_per_task", "fraction_of_full_model",
        "adapt_seconds_per_task"]
    print(reporting.format_table(rows, columns, title=f"the tour: {src_ds.name} -> {', '.join(config.data.targets)} "
                                                      f"(test accuracy %, per-task cost)"), flush=True)
    print(reporting.format_table(compat["table"], title=f"compatible components: recombination accuracy (%), "
                                                        f"a={compat['task_a']} b={compat['task_b']}"), flush=True)
    return dict(
        source=src_ds.name, source_accuracy=source_accuracy, targets=[ds.name for ds in targets], methods=methods,
        leaderboard=rows, accuracy={r["method"]: r["mean_acc"] / 100 for r in rows},
        per_target={m: {t: r.accuracy for t, r in per.items()} for m, per in adapted.items()},
        details={m: {t: dict(trainable=r.trainable, stored=r.stored, file_bytes=r.file_bytes, seconds=r.seconds,
                             full_model_bytes=r.full_model_bytes, resumed=r.resumed, **r.info)
                     for t, r in per.items()} for m, per in adapted.items()},
        bank=bank, mixed_batch_serving=served, compat=compat, stage_seconds=seconds, plots=[_plot(workdir, rows)])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    return _run(config, workdir)
