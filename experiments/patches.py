"""Model patches (Mudrakarta et al. 2018): transfer modes, patch files, multi-task, multi-resolution.

Pretrains (or reuses WORKDIR/pretrain) on config.data.name once: that backbone plays the paper's
ImageNet-pretrained model. Then, for every seed of `config.seeds` (the target's subsample and split, the
head and patch init, the batch order): every transfer mode sweeps the same learning-rate grid on a
validation split of the target's training data, retrains on all of it at the chosen rate, exports its
patch to WORKDIR/seedS/patches/MODE.patch, reloads it, and is tested once; then the multi-task comparison
and the multi-resolution patches (cascade threshold chosen on validation) with their baselines. Tables
are mean ± SE over seeds, and each paper claim gets a verdict from the intervals.
"""
from __future__ import annotations

import os

import jax
import ml_collections

from modular import checkpoint, data, models, optim, params as P, protocol, reporting, supervised
from modular.methods import patches
from modular.methods.patches import summary

# Mudrakarta et al. 2018 (ICLR'19). We could not check the paper's per-dataset numbers offline, so the
# numeric cells stay null rather than risk wrong values; the claims it makes are judged in results.json.
PAPER_TABLES = {
    "table1_transfer_accuracy": {m: None for m in patches.MODES if m != "mixture"},
    "table2_params_fraction": {m: None for m in patches.MODES if m != "mixture"},
    "table4_multitask": {"independent": None, "sb_patch": None, "shared_all_but_head": None,
                         "shared_all_but_head_and_bn_stats": None},
    "appendix_b1_bn_stats": {"last_layer": None, "last_layer_bn_stats": None},
    "multi_resolution": {"sb_patch_per_resolution": None, "all_shared": None, "independent": None,
                         "cascade": None},
    "claims": [
        "S/B + last layer clearly beats last layer alone at a small fraction of the parameters.",
        "DW + last layer beats S/B + last layer; S/B + DW + last layer approaches full fine-tuning.",
        "S/B only with a fixed random last layer is non-trivial.",
        "Patches need a much larger learning rate than full fine-tuning.",
        "Multi-task with S/B patches comes close to independent models at a fraction of total parameters.",
        "Re-estimating BN statistics significantly worsens last-layer-only transfer on most datasets "
        "(Appendix B.1).",
        "One model serves several resolutions with a per-resolution S/B patch and a shared last layer; a "
        "confidence cascade saves computation.",
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
    common = dict(model_cfg=config.model, optim_cfg=config.optim, seed=seed, log_every=config.log_every)
    if config.multitask.enabled:
        mcfg = config.multitask
        record["multitask"] = patches.compare_multitask(
            source, [_load(name, config, seed, max_train=mcfg.max_train) for name in mcfg.tasks], mcfg.sharings,
            independent=mcfg.independent, num_steps=mcfg.num_steps, batch_size=mcfg.batch_size, workdir=workdir,
            **dict(common, optim_cfg=optim.override(config.optim, lr=mcfg.lr)))
        print(reporting.format_table(record["multitask"]["table"], title=f"multi-task, seed {seed} (test accuracy)"))
    if config.multires.enabled:
        rcfg = config.multires
        sets = [_load(config.data.target, config, seed, r, config.data.get("max_train")) for r in rcfg.resolutions]
        out = record["multires"] = patches.multires.train_and_evaluate(
            source, sets, rcfg.thresholds, num_steps=rcfg.num_steps, batch_size=rcfg.batch_size,
            workdir=os.path.join(workdir, "multires"), val_fraction=config.data.val_fraction,
            baselines=rcfg.baselines, **dict(common, optim_cfg=optim.override(config.optim, lr=rcfg.lr)))
        print(reporting.format_table(out["table"], title=f"multi-resolution, seed {seed} (test accuracy)"))
        print(f"[patches] seed {seed} cascade: threshold {out['chosen']['threshold']:g} (validation) -> test "
              f"accuracy {100 * out['chosen']['accuracy']:.2f}% at {100 * out['chosen']['relative_cost']:.0f}% "
              f"of the highest resolution's FLOPs", flush=True)
    return record


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
    print(f"transfer {source_ds.name} -> {config.data.target}, {len(seeds)} seed(s), test accuracy %\n"
          f"{transfer_table}", flush=True)
    plot = reporting.accuracy_vs_params_plot(
        workdir, "accuracy_vs_params.png", {m: (per_seed[0]["stored"][m], 100 * accuracy[m].mean) for m in modes},
        xlabel="values stored per task (log)", ylabel="target test accuracy (%)",
        title="model patches: accuracy vs per-task storage")
    claims = summary.claims(per_seed, within_pts=config.claims.within_pts,
                            cascade_within_pts=config.claims.cascade_within_pts)
    tables = {"patches_transfer": transfer_table}
    results = dict(source=source_ds.name, target=config.data.target, seeds=seeds,
                   source_accuracy=source.accuracy(source_ds.test_images, source_ds.test_labels),
                   grid=dict(lrs=[float(v) for v in config.transfer.lrs], steps=int(config.transfer.num_steps),
                             batch_size=int(config.transfer.batch_size), same_for_every_mode=True,
                             chosen_on=f"validation split ({config.data.val_fraction:g} of the target's training data)"),
                   accuracy=protocol.to_dicts(accuracy), total_params=total,
                   params_per_task=per_seed[0]["stored"], trainable=per_seed[0]["trainable"],
                   chosen_lr={m: [s["lr"][m] for s in per_seed] for m in modes},
                   patch_reload_identical={m: all(s["patch_reload_identical"][m] for s in per_seed) for m in modes},
                   wrong_backbone_error=_wrong_backbone_error(config, first, source_ds), per_seed=per_seed,
                   paper=PAPER_TABLES, plots=[plot])
    if config.multitask.enabled:
        tables["patches_multitask"] = summary.table_over_seeds(
            [s["multitask"]["table"] for s in per_seed], "setting", per_seed[0]["multitask"]["tasks"] + ["mean"],
            ["per_task_params", "total_params"])
    if config.multires.enabled:
        res_columns = [c for c in per_seed[0]["multires"]["table"][0] if c.endswith("px")] + ["mean"]
        tables["patches_multires"] = (summary.table_over_seeds(
            [s["multires"]["table"] for s in per_seed], "setting", res_columns,
            ["per_resolution_params", "total_params"]) + "\n\n" + summary.multires_cascade_table(per_seed))
        results["plots"].append(_multires_plot(workdir, per_seed[0]["multires"]))
    for name, table in tables.items():
        if name != "patches_transfer":
            print(f"{name} (mean ± SE over {len(seeds)} seed(s))\n{table}", flush=True)
    tables["patches_claims"] = protocol.claims_table(claims)
    results.update(claims=claims, readme_tables=tables)
    return results
