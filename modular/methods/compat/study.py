"""The paper's Fig. 2 study and its controls over seeds: which variants run, in which order, and what each
seed's test numbers are. Variants x seeds train with alternating minibatches (`training.train_variants`),
recombination is followed on validation data while they train, the step count is chosen on validation, then the
test set is read once at that step.

1. The *main* variants train jointly (alternating minibatches) with recombination followed on validation:
   the Fig. 2 settings, the upper bound (each network its own RP head), a harder pretext (rotation + mirror),
   and the same-data controls (App. C.3). Pretrained-IIW variants start both extractors from one extractor
   pretrained on another domain.
2. The step count is chosen on the Fig. 2 settings' validation curves (`choose_steps`).
3. The chosen setting trains incrementally in both orders (a then b, b then a) for that many steps, and
   (for the fast-transfer application) the RP settings a then b.
4. Every variant's test metrics (both BN modes, feature similarity) at the chosen step, per seed.

Each seed carves its own validation split from both tasks' training data (`protocol.validation_split`); every
curve point and the step choice use only it. `choose_steps` picks the earliest evaluated step after which no
variant's mean validation recombination moves by more than `tolerance` (training has stopped changing the
answer); `recombine.test_metrics` then evaluates the snapshot of that step on the real test sets.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import ml_collections
import numpy as np

from modular import protocol
from modular.methods.compat import training as T
from modular.methods.compat.model import resolve_common_classes
from modular.methods.compat.recombine import test_metrics
from modular.methods.compat.training import Variant, parse_setting, pretrain_extractor, setting_name

PRETEXT_LABELS = {"rot4": "rotation", "dihedral8": "rotation+mirror"}


def pretrained_name(setting: str) -> str:
    return f"pretrained {setting}"


def incremental_name(setting: str, order: str = "incremental") -> str:
    return f"{setting}, {order}"


def variants(cc: ml_collections.ConfigDict) -> tuple[list[Variant], list[str]]:
    """(main variants, names of those whose curves choose the step count)."""
    main = [Variant(*parse_setting(n), rp_transforms=cc.rp_transforms) for n in cc.settings]
    chosen = [v.name for v in main]
    if cc.get("upper_bound"):
        main.append(Variant(dcc=False, rp=True, iiw=False, rp_transforms=cc.rp_transforms, rp_heads="private",
                              label="RP, own RP heads"))
    if cc.get("harder_rp"):
        main.append(Variant(dcc=False, rp=True, iiw=False, rp_transforms=cc.harder_rp,
                              label=f"RP, {PRETEXT_LABELS.get(cc.harder_rp, cc.harder_rp)}"))
    for n in cc.get("same_data") or ():
        main.append(Variant(*parse_setting(n), rp_transforms=cc.rp_transforms, same_data=True,
                              label=f"same data: {n}"))
    if cc.get("pretrain_data"):
        for n in cc.get("pretrained_settings") or ():
            dcc, rp, iiw = parse_setting(n)
            if not iiw:
                raise ValueError(f"compat.pretrained_settings {n!r}: starting both networks from pretrained "
                                 f"weights is identical initialisation, so name settings with IIW.")
            main.append(Variant(dcc, rp, iiw, rp_transforms=cc.rp_transforms, pretrained=True,
                                  label=pretrained_name(n)))
    return main, chosen


def incremental_variants(cc: ml_collections.ConfigDict, target: str) -> list[Variant]:
    """The chosen setting in every `incremental_orders`, and the fast-transfer settings a then b."""
    out = [Variant(*parse_setting(target), schedule=o, rp_transforms=cc.rp_transforms,
                     label=incremental_name(target, o)) for o in cc.get("incremental_orders") or ()]
    if "fast_transfer" in (cc.get("applications") or ()):
        for n in cc.get("fast_transfer_settings") or ():
            if incremental_name(n) not in {v.name for v in out}:
                out.append(Variant(*parse_setting(n), schedule="incremental", rp_transforms=cc.rp_transforms,
                                     label=incremental_name(n)))
    return out


def target_name(cc: ml_collections.ConfigDict) -> str:
    """The setting named by compat.dcc/rp/iiw: its metrics lead results.json, it trains incrementally and the
    applications use its pairs."""
    return setting_name(bool(cc.dcc), bool(cc.rp), bool(cc.iiw))


def check_target(cc: ml_collections.ConfigDict) -> None:
    """Before any training: the target setting must be one of compat.settings, and the loss weights valid."""
    target, settings = target_name(cc), [setting_name(*parse_setting(str(n))) for n in cc.settings]
    if target not in settings:
        raise ValueError(f"compat.settings {tuple(settings)} must include the setting named by compat.dcc/rp/iiw "
                         f"({target!r}), whose metrics lead results.json: add it to compat.settings or set "
                         f"compat.dcc/rp/iiw to one of the settings (e.g. --config.compat.dcc=False "
                         f"--config.compat.iiw=False for 'RP').")
    for key in ("dcc_weight", "rp_weight"):
        w = cc.get(key, 1.0)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
            raise ValueError(f"compat.{key} must be a finite non-negative number, got {w!r}.")


def uses_pretraining(cc: ml_collections.ConfigDict) -> bool:
    return bool(cc.get("pretrain_data") and cc.get("pretrained_settings"))


def pretrain(src, cc: ml_collections.ConfigDict, *, seeds: list[int], model_cfg, optim_cfg, batch_size: int,
             log: Callable[[str], None] = print) -> dict:
    """{seed: (extractor params, stats)} pretrained on the training split of `src` (the loaded
    `cc.pretrain_data`), or {} when no variant uses it."""
    if not uses_pretraining(cc):
        return {}
    if src is None:
        raise ValueError("compat.pretrained_settings need the pretraining dataset (compat.pretrain_data) loaded.")
    out = {}
    for s in seeds:
        t0 = time.time()
        out[s] = pretrain_extractor(model_cfg, src, num_steps=int(cc.pretrain_steps), batch_size=batch_size,
                                    optim_cfg=optim_cfg, seed=s)
        log(f"[compat] pretrained the shared initial extractor on {src.name} for seed {s} "
            f"({int(cc.pretrain_steps)} steps, {time.time() - t0:.0f}s)")
    return out


def splits(ds_a, ds_b, seeds: Sequence[int], val_fraction: float) -> dict:
    """{seed: {'a': (fit, val), 'b': (fit, val)}}, each carved from that task's training data."""
    return {s: {t: protocol.validation_split(ds, val_fraction, s) for t, ds in (("a", ds_a), ("b", ds_b))}
            for s in seeds}


def mean_curve(trained: T.Trained, key: str = "recombination") -> dict:
    """{step: mean over seeds of the validation metric}."""
    steps = [p["step"] for p in trained.curves[trained.seeds[0]]]
    return {st: float(np.mean([trained.curves[s][i][key] for s in trained.seeds])) for i, st in enumerate(steps)}


def choose_steps(curves: dict, tolerance: float) -> tuple[int, str]:
    """(step, reason): the earliest step after which every curve ({name: {step: value}}) stays within
    `tolerance` of its value there; the last step when none settles earlier."""
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    for st in steps:
        later = [t for t in steps if t >= st]
        if all(abs(c[t] - c[st]) <= tolerance for c in curves.values() for t in later):
            settled = st != steps[-1] or len(steps) == 1
            return st, ("settled" if settled else "still moving at the last evaluated step")
    return steps[-1], "still moving at the last evaluated step"


def run(ds_a, ds_b, cc: ml_collections.ConfigDict, *, seeds: list[int], val_fraction: float, model_cfg, optim_cfg,
        num_steps: int, batch_size: int, log: Callable[[str], None] = print, pretrain_source=None) -> dict:
    """The study's per-seed test metrics, curves, the step choice and the pairs (for the applications).
    `pretrain_source`: the pretraining Dataset of the pretrained-IIW variants (its test split is never read)."""
    check_target(cc)
    common = resolve_common_classes(cc.get("common_classes"), ds_a.num_classes, ds_b.num_classes)
    model_cfg = ml_collections.ConfigDict(dict(model_cfg.to_dict(), split=cc.split))
    split = splits(ds_a, ds_b, seeds, val_fraction)
    kw = dict(model_cfg=model_cfg, optim_cfg=optim_cfg, batch_size=batch_size, rp_fraction=float(cc.rp_fraction),
              common=common, num_classes=(ds_a.num_classes, ds_b.num_classes), log=log,
              dcc_weight=float(cc.get("dcc_weight", 1.0)), rp_weight=float(cc.get("rp_weight", 1.0)))
    main, chooser = variants(cc)
    points = max(1, int(cc.eval_points))
    eval_steps = sorted({max(1, int(round(num_steps * (i + 1) / points))) for i in range(points)})
    pretrained = pretrain(pretrain_source, cc, seeds=seeds, model_cfg=model_cfg, optim_cfg=optim_cfg,
                          batch_size=batch_size, log=log)
    trained = T.train_variants(main, split, seeds, num_steps=num_steps, eval_steps=eval_steps, pretrained=pretrained,
                               **kw)
    curves = {n: mean_curve(trained[n]) for n in chooser}
    step, reason = choose_steps(curves, float(cc.converge_tolerance))
    log(f"[compat] step count chosen on validation: {step} per network ({reason})")
    at = {n: step for n in trained}
    target = target_name(cc)
    inc = incremental_variants(cc, target)
    if inc:
        for name, t in T.train_variants(inc, split, seeds, num_steps=step, eval_steps=[step], **kw).items():
            trained[name], at[name] = t, step
    per_seed = {}
    for name, t in trained.items():
        b_test = ds_a if t.variant.same_data else ds_b
        per_seed[name] = [test_metrics(t.pair(s, at[name]), ds_a, b_test) for s in seeds]
    return dict(per_seed=per_seed, trained=trained, chosen_step=step, choice_reason=reason, eval_steps=eval_steps,
                curves={n: {str(s): t.curves[s] for s in seeds} for n, t in trained.items()},
                mean_curves={n: mean_curve(t) for n, t in trained.items()}, target=target,
                train_seconds={n: t.train_seconds for n, t in trained.items()}, common=common, split=split)


def chosen_pair(result: dict, seed: int):
    """The pair of the chosen setting (joint schedule) for `seed`, at the chosen step."""
    return result["trained"][result["target"]].pair(seed, result["chosen_step"])


def per_seed_summary(per_seed: dict) -> dict:
    """{variant: [ {metric: value} per seed ]} with the scalar metrics only (for protocol.aggregate)."""
    return {n: [{k: float(v) for k, v in m.items() if np.isscalar(v)} for m in runs] for n, runs in per_seed.items()}
