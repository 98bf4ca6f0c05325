"""The paper's three applications (Sec. 5), each run on every seed's networks, with claims judged from the
paired per-seed differences:

- 'uda': the chosen setting's pair; a's extractor adapts to unlabeled target images through the frozen RP
  head (`uda.run_uda`), against the unadapted network and a BatchNorm-statistics-only control;
- 'fast_transfer': the study's RP-only incremental pairs (with and without IIW); recombination starts the
  fine-tuning, against a re-initialised head with the same learning-rate grid (`transfer.fast_transfer`);
- 'cross_arch': a 5 -> 10-class head update on a frozen reference extractor, moved to a compatible
  extractor of another architecture (`head_update.run_head_update`).
"""
from __future__ import annotations

from typing import Callable

import ml_collections

from modular import optim, protocol
from modular.methods.compat import head_update, transfer, uda
from modular.methods.compat.study import chosen_pair, incremental_name

APPLICATIONS = ("uda", "fast_transfer", "cross_arch")
PAPER_APPLICATIONS = {"uda": uda.PAPER_CLAIM, "fast_transfer": transfer.PAPER_CLAIM,
                      "cross_arch": head_update.PAPER_CLAIM}


def _uda_row(r: dict) -> dict:
    return {f"{k}/{m}": float(r[k][m]) for k in ("before", "bn_stats_only", "after") for m in r["before"]}


def cross_arch_steps(cc: ml_collections.ConfigDict, num_steps: int) -> tuple[int, int]:
    """(steps per network, new-head steps): `cross_arch_steps` / `cross_arch_head_steps`, where 0 means the
    run's `num_steps` / a tenth of it (so a config that shortens num_steps shortens these too)."""
    steps = int(cc.get("cross_arch_steps") or num_steps)
    return steps, int(cc.get("cross_arch_head_steps") or max(1, num_steps // 10))


def run(study: dict, ds_a, ds_b, cc: ml_collections.ConfigDict, *, seeds: list[int], optim_cfg, model_cfg,
        batch_size: int, num_steps: int, uda_target=None, log: Callable[[str], None] = print) -> dict:
    """{app: {'per_seed': [...], 'estimates': ..., 'paper_claim': ...}} for `cc.applications`; each
    application runs once per seed (`num_steps`: the run's steps per network)."""
    apps = list(cc.get("applications") or ())
    out: dict = {}
    uda_optim = optim.override(optim_cfg, lr=float(cc.uda_lr)) if cc.get("uda_lr") else optim_cfg
    if "uda" in apps:
        if uda_target is None:
            raise ValueError("compat.applications 'uda' needs its target dataset (compat.uda_target) loaded.")
        runs = []
        for s in seeds:
            r = uda.run_uda(chosen_pair(study, s), ds_a, uda_target, optim_cfg=uda_optim,
                            num_steps=int(cc.uda_steps), batch_size=batch_size, seed=s, verbose=False)
            runs.append(dict(_uda_row(r), frozen_parts_unchanged=r["frozen_parts_unchanged"]))
            log(f"[compat uda] seed {s}: target accuracy {100 * r['before']['target_train_stats']:.1f}% -> "
                f"{100 * r['after']['target_train_stats']:.1f}% (BN statistics only "
                f"{100 * r['bn_stats_only']['target_train_stats']:.1f}%)")
        out["uda"] = dict(setting=study["target"], source=ds_a.name, target=uda_target.name,
                          steps=int(cc.uda_steps), per_seed=runs, paper_claim=PAPER_APPLICATIONS["uda"],
                          frozen_parts_unchanged=all(r["frozen_parts_unchanged"] for r in runs))
    if "fast_transfer" in apps:
        names = [incremental_name(n) for n in cc.fast_transfer_settings]
        step, runs = study["chosen_step"], []
        for s in seeds:
            pairs = {n.split(",")[0]: study["trained"][n].pair(s, step) for n in names}
            r = transfer.fast_transfer(pairs, study["split"][s]["b"][1], ds_b, optim_cfg=optim_cfg,
                                       lrs=[float(v) for v in cc.transfer_lrs], epochs=int(cc.transfer_epochs),
                                       batch_size=batch_size, train_part=cc.transfer_train, seed=s)
            runs.append(r)
            log(f"[compat fast transfer] seed {s}: test accuracy by epoch (stored BN statistics) " + "; ".join(
                f"{tag} {[round(100 * e['eval'], 1) for e in v['test']]}" for tag, v in r.items()))
        out["fast_transfer"] = dict(starts=list(runs[0]), task=ds_b.name, epochs=int(cc.transfer_epochs),
                                    lrs=[float(v) for v in cc.transfer_lrs], train_part=cc.transfer_train,
                                    per_seed=runs, paper_claim=PAPER_APPLICATIONS["fast_transfer"])
    if "cross_arch" in apps:
        settings = tuple(dict.fromkeys(("independent", cc.cross_arch_setting)))
        steps, head_steps = cross_arch_steps(cc, num_steps)
        runs = []
        for s in seeds:
            runs.append(head_update.run_head_update(
                ds_a, settings=settings, options=cc, model_cfg=model_cfg, model_b_cfg=cc.cross_arch_model,
                adapter_width=int(cc.adapter_width), optim_cfg=optim_cfg, num_steps=steps,
                head_steps=head_steps, batch_size=batch_size,
                old_classes=int(cc.cross_arch_old_classes), seed=s))
            log(f"[compat cross_arch] seed {s}: new head on extractor b (batch statistics) " + "; ".join(
                f"{n} {100 * r['transferred_bs']:.1f}%" for n, r in runs[-1].items()))
        out["cross_arch"] = dict(settings=list(settings), model_a=model_cfg.to_dict(),
                                 model_b=cc.cross_arch_model.to_dict(), adapter_width=int(cc.adapter_width),
                                 old_classes=int(cc.cross_arch_old_classes), new_classes=ds_a.num_classes,
                                 task=ds_a.name, steps=steps, head_steps=head_steps, per_seed=runs,
                                 paper_claim=PAPER_APPLICATIONS["cross_arch"])
    for name, app in out.items():
        app["estimates"] = protocol.to_dicts(estimates(name, app), scale=100.0)
    return out


def estimates(name: str, app: dict) -> dict:
    """{row: {column: Estimate}} of one application's per-seed results."""
    runs = app["per_seed"]
    if name == "uda":
        return protocol.aggregate([{k: v for k, v in r.items() if k != "frozen_parts_unchanged"} for r in runs])
    if name == "fast_transfer":
        return {tag: protocol.aggregate([{f"epoch {e['epoch']}{'' if m == 'eval' else ' (batch stats)'}": e[m]
                                          for e in r[tag]["test"] for m in ("eval", "batch_stats")} for r in runs])
                for tag in app["starts"]}
    return {n: protocol.aggregate([r[n] for r in runs]) for n in app["settings"]}


def fast_transfer_values(app: dict, start: str, epoch: int, mode: str = "eval") -> list[float]:
    return [float(next(e[mode] for e in r[start]["test"] if e["epoch"] == epoch)) for r in app["per_seed"]]
