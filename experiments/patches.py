"""Model patches (Mudrakarta et al. 2018): transfer modes, patch files, multi-task, multi-resolution.

Pretrains (or reuses WORKDIR/pretrain) on config.data.name once: that backbone plays the paper's
ImageNet-pretrained model. Then, for every seed of `config.seeds` (the target's subsample and split, the
head and patch init, the batch order): every transfer mode sweeps the same learning-rate grid on a
validation split of the target's training data, retrains on all of it at the chosen rate, exports its
patch to WORKDIR/seedS/patches/MODE.patch, reloads it, and is tested once; then the multi-task comparison
and the multi-resolution patches (cascade threshold chosen on validation) with their baselines, every row
choosing its learning rate from one grid on validation too. Tables are mean ± SE over seeds, with the
paper's numbers (PAPER_TABLES) beside them and any grid-edge choice noted under them; each paper claim gets
a verdict from the intervals.
"""
from __future__ import annotations

import os

import jax
import ml_collections

from modular import checkpoint, data, models, optim, params as P, protocol, reporting, supervised
from modular.methods import patches
from modular.methods.patches import summary
from modular.projection.phases import Phase, phase, pretrain_phases

# Mudrakarta et al. 2018 (ICLR'19), its numbers as printed in its text (../shared/papers/patches-mudrakarta2018.txt),
# top-1 accuracy in %. Rows are keyed by our row names ("labels" gives the paper's own row name); a cell is
# None only where the paper has no number. None of its datasets is ours (digits), so these stand beside our
# tables as the paper's effect sizes, never as targets for our numbers.
PAPER_TABLES = {
    "table1": dict(
        title="Table 1: transfer from ImageNet, InceptionV3 (Sec. 3.1)", network="InceptionV3",
        rows={"last_layer": {"Flowers": 84.5, "Cars": 55.0, "Aircraft": 45.9},
              "sb_last": {"Flowers": 90.4, "Cars": 81.0, "Aircraft": 70.7},
              "sb_only": {"Flowers": 79.5, "Cars": 33.0, "Aircraft": 52.3},
              "full": {"Flowers": 93.3, "Cars": 92.3, "Aircraft": 87.3},
              "full_reference_4": {"Flowers": 96.3, "Cars": 91.3, "Aircraft": 82.6}},
        params={"last_layer": {"Flowers": 208e3, "Cars": 402e3, "Aircraft": 205e3},
                "sb_last": {"Flowers": 244e3, "Cars": 437e3, "Aircraft": 241e3},
                "sb_only": {"Flowers": 36e3, "Cars": 36e3, "Aircraft": 36e3},
                "full": {"Flowers": 25e6, "Cars": 25e6, "Aircraft": 25e6},
                "full_reference_4": {"Flowers": 25e6, "Cars": 25e6, "Aircraft": 25e6}},
        labels={"last_layer": "Last layer", "sb_last": "S/B + last layer", "sb_only": "S/B only (random last)",
                "full": "All (ours)", "full_reference_4": "All [4]"}),
    "table2": dict(
        title="Table 2: ImageNet from an SSD (COCO) or random MobileNetV2 feature extractor (Sec. 3.1)",
        network="MobileNetV2",
        rows={"last_layer": {"COCO->ImageNet": 29.2, "random->ImageNet": 0.0},
              "sb_last": {"COCO->ImageNet": 47.8, "random->ImageNet": 20.0},
              "sb_only": {"COCO->ImageNet": 6.4, "random->ImageNet": 2.3},
              "full": {"COCO->ImageNet": 71.8, "random->ImageNet": 71.8}},
        params={"last_layer": 1.31e6, "sb_last": 1.35e6, "sb_only": 34e3, "full": 3.5e6},
        labels={"last_layer": "Last layer", "sb_last": "S/B + last layer", "sb_only": "S/B only",
                "full": "All params"}),
    # The DW patch (DW + last layer, S/B + DW + last layer) appears only in Fig. 2's plot (MobileNetV2 and
    # InceptionV3 on several datasets, initial learning rates 0.0045 to 0.45 in factors of 3): no number.
    "figure2": dict(title="Fig. 2: accuracy vs parameters per patch and learning rate (plot only)",
                    rows={"dw_last": {}, "sb_dw_last": {}}, lr_from=0.0045, lr_to=0.45, lr_factor=3),
    "table3": dict(
        title="Table 3: multi-task MobileNetV2 on ImageNet and Places-365 (Sec. 3.2)", network="MobileNetV2",
        rows={"multitask_sb_patch": {"ImageNet": 70.2, "Places365": 54.3},
              "multitask_shared_all_but_head": {"ImageNet": 64.4, "Places365": 51.4},
              "independent_full_models": {"ImageNet": 71.8, "Places365": 54.2}},
        total_params={"multitask_sb_patch": 3.97e6, "multitask_shared_all_but_head": 3.93e6,
                      "independent_full_models": 6.05e6},
        labels={"multitask_sb_patch": "S/B patch + last layer", "multitask_shared_all_but_head": "Last layer",
                "independent_full_models": "Independently trained"}),
    "table4": dict(
        title="Table 4: 5 MobileNetV2 models at different resolutions on ImageNet (Sec. 3.2)", network="MobileNetV2",
        rows={"sb_patch_per_resolution": {"96px": 60.3, "128px": 66.3, "160px": 69.5, "192px": 71.0, "224px": 71.8},
              "all_shared": {"96px": 52.6, "128px": 62.4, "160px": 67.2, "192px": 69.4, "224px": 70.6},
              "independent_per_resolution": {"96px": 60.3, "128px": 65.3, "160px": 68.8, "192px": 70.7,
                                             "224px": 71.8}},
        total_params={"sb_patch_per_resolution": 3.7e6, "all_shared": 3.5e6, "independent_per_resolution": 17.7e6},
        labels={"sb_patch_per_resolution": "S/B patch", "all_shared": "All shared",
                "independent_per_resolution": "Independently trained"}),
    # Sec. 3.2: a cascade of the resolution models with the best model's accuracy at 15.2% less average
    # cost, storing 5% more parameters than one model.
    "cascade": dict(cost_saved_pct=15.2, accuracy="the same as the best model", extra_params_pct=5.0),
    "table5": dict(
        title="Table 5: BN statistics in last-layer transfer, MobileNetV2 (App. B.1)", network="MobileNetV2",
        rows={"last_layer": {"Flowers": 80.2, "Aircraft": 43.3, "Stanford Cars": 51.4, "CIFAR-100": 45.0},
              "last_layer_bn_stats": {"Flowers": 79.8, "Aircraft": 38.3, "Stanford Cars": 43.6, "CIFAR-100": 57.2},
              "sb_last": {"Flowers": 86.9, "Aircraft": 65.6, "Stanford Cars": 75.9, "CIFAR-100": 74.9}},
        labels={"last_layer": "Last layer (logits)", "last_layer_bn_stats": "Same as above + batchnorm statistics",
                "sb_last": "Same as above + scales and biases"}),
    "training": dict(optimizer="RMSProp", lr=0.045, decay="0.98 per 2.5 epochs", source="App. D",
                     image_size={"MobileNetV2": 224, "InceptionV3": 299}),
    # The claims as the paper states them (our wording); results.json's `claims` judges each at our scale.
    "claims": [
        "S/B + last layer beats the last layer alone (Table 1, InceptionV3; Table 2, SSD -> ImageNet; "
        "App. B.1 Table 5, MobileNetV2).",
        "S/B only with a fixed random last layer reaches non-trivial accuracy, often comparable to the last "
        "layer alone with fewer parameters (Sec. 3.1, Table 1).",
        "Full fine-tuning stays ahead of S/B + last layer, at orders of magnitude more parameters (Table 1).",
        "Small patches (S/B, DW) beat the last layer alone, and combining them helps further (Sec. 3.1, Fig. 2).",
        "Accuracy of a small patch grows with the learning rate, whereas full fine-tuning wants a small one "
        "(Sec. 3.1; App. B.2, Fig. 9).",
        "Multi-task S/B patches are comparable to independent single-task models and beat sharing all but "
        "the last layer (Sec. 3.2, Table 3).",
        "An S/B patch per input resolution with a shared last layer matches independent models and beats "
        "sharing everything; a cascade of them keeps the best accuracy at 15.2% less average cost (Sec. 3.2, "
        "Table 4).",
        "Re-estimating BN statistics lowers last-layer transfer, unless scales and biases learn too (App. B.1, "
        "Table 5: lower on 3 of 4 datasets).",
    ],
}


def _load(name: str, config, seed: int, image_size=None, max_train=None) -> data.Dataset:
    """A target subsampled with `seed`; its test split is the pretraining's (`split_seed=config.seed`) in every
    seed, so no test image of a task built from the source's images was a pretraining image."""
    return data.load(name, image_size=image_size or config.data.image_size, channels=config.data.channels,
                     seed=seed, max_train=max_train, split_seed=config.seed)


def _transfer_all(config, workdir, source, target, seed: int) -> dict:
    """Every mode at its validation-chosen rate: accuracy, counts, chosen lr, the grid, the patch file check."""
    out = {k: {} for k in ("accuracy", "trainable", "stored", "patch_file_bytes", "patch_reload_identical",
                           "lr", "grid", "sweep_seconds")}
    tcfg = config.transfer
    for mode in tcfg.modes:
        path = os.path.join(workdir, "patches", f"{mode}.patch")
        tuned = patches.sweep.tune_and_adapt(
            source, target, mode, tcfg.lrs, val_fraction=config.data.val_fraction, model_cfg=config.model,
            optim_cfg=config.optim, num_steps=tcfg.num_steps, batch_size=tcfg.batch_size, seed=seed,
            workdir=os.path.join(workdir, "transfer", mode), bank_path=path, log_every=config.log_every,
            meta={"target": target.name}, sequential=patches.sweep.resolve_program(tcfg.sweep))
        adapted = tuned["adapted"]
        reloaded = patches.rebuilds_from_file(path, source, target, mode, adapted.accuracy, model_cfg=config.model,
                                              seed=seed)
        for key, value in zip(out, (adapted.accuracy, adapted.trainable, adapted.stored, adapted.file_bytes,
                                    reloaded, tuned["lr"], tuned["grid"], tuned["sweep_seconds"])):
            out[key][mode] = value
        print(f"[patches] seed {seed} {mode}: lr {tuned['lr']:g} (validation), test accuracy "
              f"{100 * adapted.accuracy:.2f}%  trainable {adapted.trainable:,}  stored {adapted.stored:,}  "
              f"reload identical {reloaded}", flush=True)
    return out


def _wrong_backbone_error(config, workdir, target) -> str:
    """Loading a patch onto a backbone it was not trained on must fail with one sentence."""
    other_cfg = ml_collections.ConfigDict(dict(config.model.to_dict(), width=config.model.width * 2))
    other = models.init(models.build(other_cfg, target.num_classes), jax.random.key(0), (1,) + target.image_shape)
    mode = "sb_last" if "sb_last" in config.transfer.modes else config.transfer.modes[0]
    try:
        patches.import_patch(os.path.join(workdir, "patches", f"{mode}.patch"), other, mode)
    except (checkpoint.CheckpointError, P.SubtreeMismatchError) as e:
        return str(e)
    raise AssertionError("a patch loaded onto a backbone of another width without an error")


def _multires_plot(workdir, out) -> str:
    """The test cascade curve of one seed (every threshold), the validation-chosen point marked."""
    fig, ax = reporting.new_figure(figsize=(5, 3.5))
    ax.plot([c["relative_cost"] for c in out["cascade"]], [100 * c["accuracy"] for c in out["cascade"]], "o-",
            label="cascade (thresholds)")
    ax.scatter([r["relative_cost"] for r in out["per_resolution"]],
               [100 * r["accuracy"] for r in out["per_resolution"]], c="k", marker="s", label="single resolution")
    ax.scatter([out["chosen"]["relative_cost"]], [100 * out["chosen"]["accuracy"]], c="r", marker="*", s=80,
               label=f"threshold chosen on validation ({out['chosen']['threshold']:g})")
    ax.set_xlabel("mean FLOPs relative to the largest resolution")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    return reporting.save_figure(fig, reporting.figure_path(workdir, "multires_cascade.png"))


def _seed_run(config, workdir, source, seed: int) -> dict:
    """One seed: every transfer mode, then the multi-task and multi-resolution comparisons."""
    target = _load(config.data.target, config, seed, max_train=config.data.get("max_train"))
    record = _transfer_all(config, workdir, source, target, seed)
    common = dict(model_cfg=config.model, optim_cfg=config.optim, seed=seed, val_fraction=config.data.val_fraction,
                  sequential=patches.sweep.resolve_program(config.transfer.sweep))
    if config.multitask.enabled:
        mcfg = config.multitask
        record["multitask"] = patches.compare_multitask(
            source, [_load(name, config, seed, max_train=mcfg.max_train) for name in mcfg.tasks], mcfg.sharings,
            independent=mcfg.independent, lrs=mcfg.lrs, num_steps=mcfg.num_steps, batch_size=mcfg.batch_size,
            workdir=workdir, log_every=config.log_every, **common)
        print(reporting.format_table(record["multitask"]["table"], title=f"multi-task, seed {seed} (test accuracy)"))
    if config.multires.enabled:
        rcfg = config.multires
        sets = [_load(config.data.target, config, seed, r, config.data.get("max_train")) for r in rcfg.resolutions]
        out = record["multires"] = patches.multires.train_and_evaluate(
            source, sets, rcfg.thresholds, lrs=rcfg.lrs, num_steps=rcfg.num_steps, batch_size=rcfg.batch_size,
            baselines=rcfg.baselines, **common)
        print(reporting.format_table(out["table"], title=f"multi-resolution, seed {seed} (test accuracy)"))
        print(f"[patches] seed {seed} cascade: threshold {out['chosen']['threshold']:g} (validation) -> test "
              f"accuracy {100 * out['chosen']['accuracy']:.2f}% at {100 * out['chosen']['relative_cost']:.0f}% "
              f"of the highest resolution's FLOPs", flush=True)
    return record


def _edges(lrs, rows: dict, seeds) -> dict:
    """{row: protocol.grid_edges} for rows {row: [chosen lr per seed, or a list of per-task rates per seed]};
    a row of independent models lists every (seed, task) choice as 'SEED/TASK_INDEX'."""
    out = {}
    for row, per_seed in rows.items():
        chosen, labels = [], []
        for seed, lr in zip(seeds, per_seed):
            rates = lr if isinstance(lr, (list, tuple)) else [lr]
            chosen += [dict(lr=r) for r in rates]
            labels += [seed if len(rates) == 1 else f"{seed}/{j}" for j in range(len(rates))]
        out[row] = protocol.grid_edges(dict(lr=[float(v) for v in lrs]), chosen, seeds=labels)
    return out


def _with_note(table: str, edges: dict) -> str:
    note = protocol.edges_note(edges)
    return table + (f"\n\n{note}" if note else "")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    if config.data.target == config.data.name:
        raise ValueError(f"config.data.target must differ from the source domain {config.data.name!r}.")
    source, source_ds = supervised.pretrained_backbone(config, workdir)
    seeds = protocol.seeds(config)
    per_seed = [_seed_run(config, os.path.join(workdir, f"seed{seed}"), source, seed) for seed in seeds]
    modes, first = list(config.transfer.modes), os.path.join(workdir, f"seed{seeds[0]}")
    total = P.count(source.variables["params"])
    accuracy = protocol.aggregate([s["accuracy"] for s in per_seed])
    transfer_table = summary.transfer_table(per_seed, modes, total)
    plot = reporting.accuracy_vs_params_plot(
        workdir, "accuracy_vs_params.png", {m: (per_seed[0]["stored"][m], 100 * accuracy[m].mean) for m in modes},
        xlabel="values stored per task (log)", ylabel="target test accuracy (%)",
        title="model patches: accuracy vs per-task storage")
    chance = 1.0 / _load(config.data.target, config, seeds[0], max_train=config.data.get("max_train")).num_classes
    claims = summary.claims(per_seed, paper=PAPER_TABLES, within_pts=config.claims.within_pts,
                            cascade_within_pts=config.claims.cascade_within_pts, chance=chance)
    chosen_lr = {m: [s["lr"][m] for s in per_seed] for m in modes}
    edges = {"patches_transfer": _edges(config.transfer.lrs, {summary.MODE_LABELS.get(m, m): chosen_lr[m]
                                                               for m in modes}, seeds)}
    tables = {"patches_transfer": _with_note(transfer_table, edges["patches_transfer"])}
    ours = {m: summary.pm([s["accuracy"][m] for s in per_seed]) for m in modes}
    tables["patches_transfer_paper"] = summary.paper_table(
        summary.paper_columns([("T1", PAPER_TABLES["table1"]), ("T2", PAPER_TABLES["table2"]),
                               ("T5", PAPER_TABLES["table5"])]),
        modes, ours, ours_title=f"ours: {config.data.target}")
    results = dict(source=source_ds.name, target=config.data.target, seeds=seeds,
                   source_accuracy=source.accuracy(source_ds.test_images, source_ds.test_labels),
                   grid=dict(lrs=[float(v) for v in config.transfer.lrs], steps=int(config.transfer.num_steps),
                             batch_size=int(config.transfer.batch_size), same_for_every_mode=True,
                             chosen_on=f"validation split ({config.data.val_fraction:g} of the target's training data)"),
                   accuracy=protocol.to_dicts(accuracy), total_params=total,
                   params_per_task=per_seed[0]["stored"], trainable=per_seed[0]["trainable"],
                   chosen_lr=chosen_lr,
                   patch_reload_identical={m: all(s["patch_reload_identical"][m] for s in per_seed) for m in modes},
                   wrong_backbone_error=_wrong_backbone_error(config, first, source_ds), per_seed=per_seed,
                   paper=PAPER_TABLES, plots=[plot])
    for part, section, key in (("multitask", config.multitask, "patches_multitask"),
                               ("multires", config.multires, "patches_multires")):
        if section.enabled:
            results[f"{part}_grid"] = dict(lrs=[float(v) for v in section.lrs], steps=int(section.num_steps),
                                           batch_size=int(section.batch_size), same_for_every_row=True,
                                           chosen_on=f"validation split ({config.data.val_fraction:g} of each "
                                                     f"task's training data)")
            rows = per_seed[0][part]["table"]
            results[f"{part}_chosen_lr"] = {r["setting"]: [s[part]["table"][i]["lr"] for s in per_seed]
                                            for i, r in enumerate(rows)}
            edges[key] = _edges(section.lrs, results[f"{part}_chosen_lr"], seeds)
    if config.multitask.enabled:
        table = summary.table_over_seeds([s["multitask"]["table"] for s in per_seed], "setting",
                                         per_seed[0]["multitask"]["tasks"] + ["mean"],
                                         ["per_task_params", "total_params"])
        t3 = PAPER_TABLES["table3"]
        paper = summary.paper_columns([("paper T3", t3)])
        paper["paper T3 total params"] = ({r: {"n": f"{v / 1e6:.2f}M"} for r, v in t3["total_params"].items()}, "n")
        ours = summary.row_means(per_seed, "multitask")
        tables["patches_multitask"] = (_with_note(table, edges["patches_multitask"]) + "\n\n" + summary.paper_table(
            paper, list(ours), ours, ours_title="ours: mean %", title=f"The paper's {t3['title']}"))
    if config.multires.enabled:
        res_columns = [c for c in per_seed[0]["multires"]["table"][0] if c.endswith("px")] + ["mean"]
        table = summary.table_over_seeds([s["multires"]["table"] for s in per_seed], "setting", res_columns,
                                         ["per_resolution_params", "total_params"])
        t4 = PAPER_TABLES["table4"]
        paper = summary.paper_columns([("paper", t4)])
        paper["paper total params"] = ({r: {"n": f"{v / 1e6:.1f}M"} for r, v in t4["total_params"].items()}, "n")
        ours = summary.row_means(per_seed, "multires")
        tables["patches_multires"] = (
            _with_note(table, edges["patches_multires"]) + "\n\n"
            + summary.multires_cascade_table(per_seed, PAPER_TABLES) + "\n\n"
            + summary.paper_table(paper, list(ours), ours, ours_title="ours: mean %",
                                  title=f"The paper's {t4['title']}"))
        results["plots"].append(_multires_plot(workdir, per_seed[0]["multires"]))
    results["grid_edges"] = edges
    print(f"transfer {source_ds.name} -> {config.data.target}, {len(seeds)} seed(s), test accuracy %", flush=True)
    for name, table in tables.items():
        print(f"{name} (mean ± SE over {len(seeds)} seed(s))\n{table}", flush=True)
    tables["patches_claims"] = protocol.claims_table(claims)
    results.update(claims=claims, readme_tables=tables)
    return results


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = "evaluation passes; multi-task serving"


def phases(config) -> list[Phase]:
    t, m, r, target = config.transfer, config.multitask, config.multires, config.data.target
    out = pretrain_phases(config)
    lrs = len(t.get("lrs") or [None])  # every mode sweeps the learning-rate grid on validation
    out += [phase(config, f"transfer {mode}", data=target, batch_size=t.batch_size, steps=t.num_steps,
                  rules=patches.lr_rules(mode), repeats=lrs) for mode in t.modes]
    if m.enabled:  # one S/B patch per task over the summed batch; independent: a full model per task
        tasks = list(m.tasks)
        runs = len(m.get("lrs") or [None]) + 1   # each row's rate grid on validation, then a retrain at its choice
        out.append(phase(config, "multitask S/B patches", data=tasks[0], batch_size=m.batch_size * len(tasks),
                         steps=m.num_steps, rules=patches.lr_rules("sb_last"), repeats=len(m.sharings) * runs))
        if m.independent:
            out.append(phase(config, "multitask independent models", data=tasks[0], batch_size=m.batch_size,
                             steps=m.num_steps, repeats=len(tasks) * runs))
    if r.enabled:  # each resolution's rate grid; the model its sweep chose is the one reported
        out += [phase(config, f"multires {size}px S/B", data=target, image_size=size, batch_size=r.batch_size,
                      steps=r.num_steps, rules=patches.lr_rules("sb_last"), repeats=len(r.get("lrs") or [None]))
                for size in r.resolutions]
    return out
