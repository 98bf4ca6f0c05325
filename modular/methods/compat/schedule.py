"""Settings (which of DCC, RP, IIW are on) and the two training schedules of a compatible pair.

joint: every step trains both networks on one minibatch of each task (the losses summed).
incremental: network a alone first; then network b against a's frozen auxiliary heads, as when a new
network must fit components that are already deployed.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import ml_collections

from modular import data, rng, train
from modular.methods.compat.losses import make_loss_fn, resolve_common_classes
from modular.methods.compat.modules import AUX_HEADS, CompatModules, build_modules, init_variables

SCHEDULES = ("joint", "incremental")
SETTING_PARTS = ("IIW", "RP", "DCC")


def default_options() -> ml_collections.ConfigDict:
    """The method's own options (`config.compat` starts from these)."""
    return ml_collections.ConfigDict(dict(
        schedule="joint",                    # joint | incremental
        split="stage2",                      # last extractor unit; the heads hold the rest + pool + classifier
        common_classes=ml_collections.FieldReference(None, field_type=list),  # None: every shared label id
        dcc_weight=1.0, rp_weight=1.0,
        rp_fraction=1.0,                     # rotate this share of each batch (the paper: every image)
    ))


def check_options(options: ml_collections.ConfigDict) -> None:
    if options.schedule not in SCHEDULES:
        raise ValueError(f"Unknown compat.schedule {options.schedule!r}; known: {', '.join(SCHEDULES)}.")


def setting_name(dcc: bool, rp: bool, iiw: bool) -> str:
    """'IIW+RP+DCC', 'DCC', ... or 'independent' (the paper's names)."""
    parts = [n for n, on in zip(SETTING_PARTS, (iiw, rp, dcc)) if on]
    return "+".join(parts) or "independent"


def parse_setting(name: str) -> tuple[bool, bool, bool]:
    """'IIW+RP+DCC' -> (dcc, rp, iiw); the inverse of `setting_name`."""
    parts = set() if name == "independent" else set(str(name).split("+"))
    if not parts <= set(SETTING_PARTS) or (name != "independent" and not parts):
        raise ValueError(f"Unknown compat setting {name!r}; use 'independent' or a '+'-joined set of IIW, RP, DCC.")
    return "DCC" in parts, "RP" in parts, "IIW" in parts


# The paper's order (Fig. 2): independent, single ones, pairs, all three.
SETTINGS = tuple(parse_setting(n) for n in ("independent", "DCC", "RP", "IIW", "RP+DCC", "IIW+DCC", "IIW+RP",
                                             "IIW+RP+DCC"))


def phases(schedule: str, setting: tuple[bool, bool, bool]) -> list[tuple[tuple[str, ...], list[tuple[str, float]]]]:
    """[(tasks trained together, freezing rules)] of `schedule`; unused auxiliary heads stay frozen."""
    dcc, rp, _ = setting
    unused = [f"shared/{n}" for n, on in zip(AUX_HEADS, (dcc, rp)) if not on]
    if schedule == "joint":
        plan = [(("a", "b"), unused)]
    else:
        plan = [(("a",), unused + ["tasks/b"]), (("b",), unused + ["tasks/a", "shared/dcc", "shared/rp"])]
    return [(tasks, [(f"{p}/.*", 0.0) for p in sorted(set(frozen))]) for tasks, frozen in plan]


@dataclasses.dataclass
class Pair:
    """Two trained networks and their shared heads."""
    modules: CompatModules
    params: Any                  # pair layout, host arrays (see modules.py)
    stats: Any                   # BatchNorm statistics, same layout
    common: list[int]            # the classes both tasks share (DCC's classes, recombination's test classes)
    setting: str                 # e.g. 'IIW+RP+DCC'
    history: list[dict]
    train_seconds: float


def train_pair(ds_a, ds_b, *, setting: tuple[bool, bool, bool], options: ml_collections.ConfigDict,
               model_cfg: ml_collections.ConfigDict, optim_cfg: ml_collections.ConfigDict, num_steps: int,
               batch_size: int, seed: int = 0, workdir: str | None = None, name: str | None = None,
               checkpoint_every: int = 0, log_every: int = 100, verbose: bool = True,
               model_b_cfg: ml_collections.ConfigDict | None = None, adapter_width: int | None = None) -> Pair:
    """Train networks a (on ds_a) and b (on ds_b) with `setting` = (dcc, rp, iiw) and `options.schedule`.

    Each phase checkpoints under `workdir/name/<tasks>`. With `model_b_cfg`, network b has an extractor of
    that architecture (both extractors adapted to `adapter_width` channels). `options.split` sets where
    `model_cfg`'s extractor ends; `optim_cfg.lr_mults` apply after the schedule's freezing rules.
    """
    check_options(options)
    dcc, rp, iiw = setting
    name = name or setting_name(*setting)
    common = resolve_common_classes(options.get("common_classes"), ds_a.num_classes, ds_b.num_classes)
    model_cfg = ml_collections.ConfigDict(dict(model_cfg.to_dict(), split=options.split))
    mods = build_modules(model_cfg, ds_a.num_classes, ds_b.num_classes, len(common), model_b_cfg=model_b_cfg,
                         adapter_width=adapter_width)
    params, stats = init_variables(mods, rng.key(seed, "init"), ds_a.image_shape, identical_init=iiw)
    sets = {"a": ds_a, "b": ds_b}
    history, seconds = [], 0.0
    for tasks, rules in phases(options.schedule, setting):
        loss_fn = make_loss_fn(mods, tasks, dcc=dcc, rp=rp, common=tuple(common),
                               num_classes=max(ds_a.num_classes, ds_b.num_classes),
                               dcc_weight=float(options.dcc_weight), rp_weight=float(options.rp_weight),
                               rp_fraction=float(options.rp_fraction))
        phase = f"{name}/{'+'.join(tasks)}"
        trained = train.train_subtrees(
            params, stats, loss_fn=loss_fn, optim_cfg=optim_cfg,
            rules=rules + [tuple(r) for r in optim_cfg.get("lr_mults", [])],
            batch_fn=functools.partial(data.multitask_batch, {t: sets[t] for t in tasks}, batch_size=batch_size,
                                       seed=seed),
            num_steps=num_steps, seed=seed, name=phase, workdir=os.path.join(workdir, phase) if workdir else None,
            checkpoint_every=checkpoint_every, log_every=log_every, verbose=verbose)
        params, stats = trained.params, trained.model_state
        history += [dict(h, phase=phase) for h in trained.fit.history]
        seconds += trained.fit.seconds
    return Pair(modules=mods, params=params, stats=stats, common=common, setting=setting_name(*setting),
                history=history, train_seconds=seconds)
