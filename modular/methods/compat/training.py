"""Training compatible pairs: one implementation, the paper's (Sec. 3.4). The two networks take turns, one
minibatch each (a step of network a updates only a's own parameters and the shared heads it used; b's parameters
and optimiser state do not move), each part with its own optimiser (the paper's Adam + L2). The study, the
single pairs of the tour and the head update's pairs (`train_pair`) all train through `train_group`.

A *setting* names which of DCC, RP, IIW are on; a *variant* is one row of a study (setting, schedule, RP
transforms, shared or private RP heads, same data, pretrained start). Variants that differ only in IIW, DCC
weight, data and seed have the same shapes and the same program, so their pairs (*members*) train together:
stacked on a leading axis under `jax.vmap` on accelerators; on CPU one compiled single-member program called
member after member, since XLA:CPU turns a vmapped convolution with per-member weights into a grouped
convolution (4x slower than the loop, ResNet-8, 2 cores) and `jax.lax.map` runs the step 6x slower than the
plain program.

Schedules: 'joint' alternates a and b; 'incremental' trains a (with the shared heads) then b against a's frozen
heads, as when a new network must fit components that are already deployed; 'incremental_ba' the reverse.
The pretrained-IIW settings start both extractors from one extractor pretrained by rotation prediction only
(`pretrain_extractor`).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import data, losses, models, optim, rng, train
from modular.data import pipeline
from modular.methods.compat.model import (CompatModules, apply_pretext, build_modules, common_label_map,
                                          draw_pretext, init_variables, make_rotation_loss, pretext_classes,
                                          resolve_common_classes, run_module)
from modular.methods.compat.recombine import evaluate, val_metrics
from modular.platform import xla_cpu

SCHEDULES = ("joint", "incremental", "incremental_ba")
SETTING_PARTS = ("IIW", "RP", "DCC")
RP_HEADS = ("shared", "private")


# Settings and options.

def default_options() -> ml_collections.ConfigDict:
    """The method's own options (`config.compat` starts from these)."""
    return ml_collections.ConfigDict(dict(
        schedule="joint",                    # train_pair's: joint | incremental | incremental_ba
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


@dataclasses.dataclass
class Pair:
    """Two trained networks and their shared heads."""
    modules: CompatModules
    params: Any                  # pair layout, host arrays (see model.py)
    stats: Any                   # BatchNorm statistics, same layout
    common: list[int]            # the classes both tasks share (DCC's classes, recombination's test classes)
    setting: str                 # e.g. 'IIW+RP+DCC'
    train_seconds: float


# One part's optimiser.

def build_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimiser for `num_steps` updates of one part (a network, or the shared heads; its schedule counts
    that part's own updates), with the paper's Adam + L2.

    `config.optim` keys: name (adam | adamw | sgd | momentum), lr, schedule (any `modular.optim.schedule`,
    including the paper's 'step' with decay_at and decay_factor), weight_decay. With name 'adam' a positive
    weight_decay is an L2 penalty on every parameter added to the gradient (the classic, coupled form, as in
    the paper's Adam + weight decay 1e-7); 'adamw' is the decoupled form of `modular.optim`."""
    lr, wd, name = optim.schedule(cfg, num_steps), float(cfg.get("weight_decay", 0.0)), cfg.get("name", "adam")
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr)) if wd else optax.adam(lr)
    if name == "adamw":
        return optax.adamw(lr, weight_decay=wd)
    if name in ("sgd", "momentum"):
        tx = optax.sgd(lr, momentum=float(cfg.get("momentum", 0.9)) if name == "momentum" else None)
        return optax.chain(optax.add_decayed_weights(wd), tx) if wd else tx
    raise ValueError(f"Unknown optimizer {name!r} for compat; known: adam, adamw, sgd, momentum.")


# Variants and their members' alternating step.

@dataclasses.dataclass(frozen=True)
class Variant:
    """One setting of a study. `rp_heads='private'` gives each network its own RP head (the upper bound on
    what self-supervision alone does for each network, with nothing shared); `same_data` trains b on a's
    task (paper App. C.3); `pretrained` starts both extractors from the same pretrained weights (the task
    heads identical and random, as in IIW)."""
    dcc: bool
    rp: bool
    iiw: bool
    schedule: str = "joint"
    rp_transforms: str = "rot4"
    rp_heads: str = "shared"
    same_data: bool = False
    label: str = ""
    pretrained: bool = False

    def __post_init__(self):
        if self.pretrained and not self.iiw:
            raise ValueError("A compat variant that starts from pretrained weights starts both networks from them, "
                             "so it needs IIW.")

    @property
    def name(self) -> str:
        return self.label or setting_name(self.dcc, self.rp, self.iiw)

    def group_key(self) -> tuple:
        """Variants with equal keys share one compiled program: IIW and pretraining are initialisations, DCC
        a per-member loss weight and `same_data` a per-member choice of b's images."""
        return (self.rp, self.schedule, self.rp_transforms, self.rp_heads)

    def program(self, dcc: bool) -> "Variant":
        """The variant that names the compiled step of this variant's group (`dcc`: any member uses DCC)."""
        return Variant(dcc=dcc, rp=self.rp, iiw=False, schedule=self.schedule, rp_transforms=self.rp_transforms,
                       rp_heads=self.rp_heads)


def check_variant(v: Variant) -> None:
    if v.schedule not in SCHEDULES:
        raise ValueError(f"Unknown compat schedule {v.schedule!r}; known: {', '.join(SCHEDULES)}.")
    if v.rp_heads not in RP_HEADS:
        raise ValueError(f"Unknown compat.rp_heads {v.rp_heads!r}; known: {', '.join(RP_HEADS)}.")
    pretext_classes(v.rp_transforms)


def plan(schedule: str, num_steps: int) -> list[tuple[str, bool]]:
    """[(network stepping, shared heads train)] for every step: 'joint' alternates a and b (num_steps each);
    'incremental' trains a (with the heads) then b against a's frozen heads; 'incremental_ba' the reverse."""
    if schedule == "joint":
        return [(t, True) for _ in range(num_steps) for t in "ab"]
    first, second = ("a", "b") if schedule == "incremental" else ("b", "a")
    return [(first, True)] * num_steps + [(second, False)] * num_steps


def modules_for(model_cfg: ml_collections.ConfigDict, v: Variant, num_a: int, num_b: int, num_common: int, *,
                model_b_cfg: ml_collections.ConfigDict | None = None, adapter_width: int | None = None
                ) -> CompatModules:
    """`build_modules` with the RP head sized to the variant's pretext."""
    mods = build_modules(model_cfg, num_a, num_b, num_common, model_b_cfg=model_b_cfg, adapter_width=adapter_width)
    return dataclasses.replace(mods, rp_head=models.build_head(model_cfg, pretext_classes(v.rp_transforms)))


def init_member(mods: CompatModules, v: Variant, seed: int, image_shape: tuple,
                pretrained: tuple | None = None) -> tuple[dict, dict]:
    """A pair's (params, stats); a private-RP variant gets b's own RP head under shared/rp_b; a pretrained
    variant gets `pretrained` = (extractor params, extractor stats) in both networks."""
    params, stats = init_variables(mods, rng.key(seed, "init"), image_shape, identical_init=v.iiw)
    if v.pretrained:
        if pretrained is None:
            raise ValueError(f"compat variant {v.name!r} starts from pretrained weights, but none were given.")
        for t in "ab":
            params["tasks"][t]["extractor"], stats["tasks"][t]["extractor"] = pretrained
    if v.rp and v.rp_heads == "private":
        feats = jax.eval_shape(lambda p, s: mods.extractor.apply({"params": p, "batch_stats": s},
                                                                 jnp.zeros((1,) + tuple(image_shape)))[0],
                               params["tasks"]["a"]["extractor"], stats["tasks"]["a"]["extractor"])
        var = models.init(mods.rp_head, rng.key(seed, "init", "rp_b"), feats.shape)
        params["shared"]["rp_b"], stats["shared"]["rp_b"] = var["params"], var.get("batch_stats", {})
    return params, stats


def rp_head_name(v: Variant, task: str) -> str:
    return "rp_b" if (v.rp_heads == "private" and task == "b") else "rp"


def used_heads(v: Variant, task: str) -> list[str]:
    return (["dcc"] if v.dcc else []) + ([rp_head_name(v, task)] if v.rp else [])


def optimisers(optim_cfg: ml_collections.ConfigDict, v: Variant, num_steps: int) -> dict:
    """One optimiser per part; each schedule counts that part's own updates."""
    return _optimisers(optim_cfg, v.schedule, num_steps)


def _optimisers(optim_cfg: ml_collections.ConfigDict, schedule: str, num_steps: int) -> dict:
    steps = plan(schedule, num_steps)
    shared_updates = sum(1 for _, train_shared in steps if train_shared)
    tx_net = build_optimizer(optim_cfg, num_steps)
    return {"a": tx_net, "b": tx_net, "shared": build_optimizer(optim_cfg, max(1, shared_updates))}


def init_opt_state(txs: dict, v: Variant, params: dict) -> dict:
    return _init_parts(txs, _trained_heads(v), params)


def _trained_heads(v: Variant) -> tuple[str, ...]:
    return tuple(sorted({h for t in "ab" for h in used_heads(v, t)}))


def _init_parts(txs: dict, heads: tuple[str, ...], params: dict) -> dict:
    return {"a": txs["a"].init(params["tasks"]["a"]), "b": txs["b"].init(params["tasks"]["b"]),
            "shared": txs["shared"].init({h: params["shared"][h] for h in heads})}


def init_opt_program(optim_cfg: ml_collections.ConfigDict, v: Variant):
    """jitted params -> every part's optimizer state, one compiled program per member tree. The initial state
    does not depend on the schedule or its length (the optimisers keep a step count, not the rate), so the
    program is keyed on the optimizer config and the shared heads the variant trains alone: groups that differ
    in schedule, DCC or step count share it instead of tracing the same program again."""
    return _init_opt_program(json.dumps(optim_cfg.to_dict(), sort_keys=True, default=str), _trained_heads(v))


@functools.lru_cache(maxsize=64)
def _init_opt_program(optim_json: str, heads: tuple[str, ...]):
    txs = _optimisers(ml_collections.ConfigDict(json.loads(optim_json)), "joint", 1)
    return jax.jit(functools.partial(_init_parts, txs, heads))


def per_member_loop() -> bool:
    """On CPU members run one after another through a single-member program (see module doc)."""
    return jax.default_backend() == "cpu"


def pack(trees: Sequence[Any]) -> Any:
    """The members' trees as `member_step` takes them: a list on CPU, stacked on a leading axis elsewhere."""
    return [jax.tree.map(jnp.asarray, t) for t in trees] if per_member_loop() else stack(trees)


def unpack(state: Any) -> list:
    """Host trees, one per member, from `pack`'s form."""
    host = jax.device_get(state)
    if isinstance(host, list):
        return [jax.tree.map(np.asarray, t) for t in host]
    return [unstack(host, i) for i in range(len(jax.tree.leaves(host)[0]))]


@functools.lru_cache(maxsize=64)
def member_step(mods: CompatModules, v: Variant, task: str, train_shared: bool, common: tuple[int, ...],
                num_classes: int, rp_fraction: float, optim_json: str, num_steps: int):
    """step(state, batch) -> (state, metrics) of network `task` for every member (jitted, state donated).

    state = {params, stats, opt}; batch = {image, label, rp_ids} with a leading member axis. Only
    `params.tasks[task]` and (if `train_shared`) the shared heads the variant uses receive updates."""
    txs = optimisers(ml_collections.ConfigDict(json.loads(optim_json)), v, num_steps)
    label_map = jnp.asarray(common_label_map(common, num_classes))
    heads = used_heads(v, task)
    all_heads = sorted({h for t in "ab" for h in used_heads(v, t)})
    rp_name = rp_head_name(v, task)

    def loss_fn(net, heads_p, params, stats, batch):
        x, y = batch["image"], batch["label"]
        shared_p = dict(params["shared"], **heads_p)
        feats, ext_s = run_module(mods.ext(task), net["extractor"], stats["tasks"][task]["extractor"], x, "train")
        logits, head_s = run_module(mods.head(task), net["head"], stats["tasks"][task]["head"], feats, "train")
        task_loss = losses.cross_entropy(logits, y)
        total, metrics = task_loss, {"loss": task_loss, "acc": losses.accuracy(logits, y)}
        shared_s = dict(stats["shared"])
        head_mode = "train" if train_shared else "batch_stats"   # frozen heads keep their statistics
        if v.dcc:
            target = jnp.sum(jnp.where(y[:, None] == jnp.arange(label_map.shape[0]), label_map, 0), -1)
            dcc_logits, shared_s["dcc"] = run_module(mods.dcc_head, shared_p["dcc"], shared_s["dcc"], feats, head_mode)
            dcc_loss = losses.cross_entropy(dcc_logits, jnp.maximum(target, 0), target >= 0)
            # Members without DCC train the same program with weight 0: their DCC head gets no gradient.
            total, metrics["dcc"] = total + batch["dcc_weight"] * dcc_loss, dcc_loss
        if v.rp:
            n = max(1, int(round(x.shape[0] * rp_fraction)))
            ids = batch["rp_ids"][:n]
            views = apply_pretext(x[:n], ids, v.rp_transforms)
            # Rotated images normalise with their own batch statistics and leave the running ones alone.
            r_feats, _ = run_module(mods.ext(task), net["extractor"], stats["tasks"][task]["extractor"], views,
                                    "batch_stats")
            rp_logits, shared_s[rp_name] = run_module(mods.rp_head, shared_p[rp_name], shared_s[rp_name], r_feats,
                                                      head_mode)
            rp_loss = losses.cross_entropy(rp_logits, ids)
            total = total + batch["rp_weight"] * rp_loss
            metrics["rp"], metrics["rp_acc"] = rp_loss, losses.accuracy(rp_logits, ids)
        new_stats = {"shared": shared_s, "tasks": dict(stats["tasks"], **{task: {"extractor": ext_s, "head": head_s}})}
        return total, (new_stats, metrics)

    def one(state, batch):
        params = state["params"]
        net, heads_p = params["tasks"][task], {h: params["shared"][h] for h in heads}
        (_, (stats, metrics)), (g_net, g_heads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
            net, heads_p, params, state["stats"], batch)
        opt = dict(state["opt"])
        upd, opt[task] = txs[task].update(g_net, opt[task], net)
        new_params = {"shared": dict(params["shared"]),
                      "tasks": dict(params["tasks"], **{task: optax.apply_updates(net, upd)})}
        if train_shared and all_heads:
            g_all = {h: g_heads.get(h, jax.tree.map(jnp.zeros_like, params["shared"][h])) for h in all_heads}
            p_all = {h: params["shared"][h] for h in all_heads}
            upd, opt["shared"] = txs["shared"].update(g_all, opt["shared"], p_all)
            new_params["shared"].update(optax.apply_updates(p_all, upd))
        return {"params": new_params, "stats": stats, "opt": opt}, metrics

    if not per_member_loop():
        return jax.jit(jax.vmap(one), donate_argnums=(0,))
    single = xla_cpu.jit(one, donate_argnums=(0,))

    def loop(states, batch):
        outs = [single(st, {k: x[i] for k, x in batch.items()}) for i, st in enumerate(states)]
        return [o[0] for o in outs], jax.tree.map(lambda *xs: jnp.stack(xs), *[o[1] for o in outs])

    return loop


def member_batches(fit_sets: Sequence[dict], seeds: Sequence[int], variants: Sequence[Variant], task: str,
                   step: int, batch_size: int, *, dcc_weight: float = 1.0, rp_weight: float = 1.0) -> dict:
    """The stacked batch of network `task`'s `step`-th update for each member: member i draws from its fit
    sets with its seed's named streams, so variants with the same seed see the same images. Each member's
    loss weights ride along: `dcc_weight` (0 for members without DCC) and `rp_weight` (`compat.dcc_weight`,
    `compat.rp_weight`; the paper sets both to 1, App. E)."""
    out = []
    for sets, s, v in zip(fit_sets, seeds, variants):
        ds = sets[task]
        n = min(batch_size, len(ds.train_images))
        b = pipeline.batch_at(ds.train_images, ds.train_labels, step, n, rng.seed(s, "batches", task))
        b["dcc_weight"] = np.float32(dcc_weight if v.dcc else 0.0)
        b["rp_weight"] = np.float32(rp_weight if v.rp else 0.0)
        if v.rp:
            b["rp_ids"] = draw_pretext(np.random.default_rng(rng.seed(s, "rp_ids", task, step)), n, v.rp_transforms)
        out.append(b)
    return {k: np.stack([b[k] for b in out]) for k in out[0]}


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)


# Training a group of variants (the study's), or one pair.

@dataclasses.dataclass
class Trained:
    """One variant's pairs: curves[seed] = [{step, recombination, a_to_b, b_to_a, own}] on validation and
    snapshots[step] = per-seed (params, stats) host trees."""
    variant: Variant
    modules: object
    common: list[int]
    seeds: list[int]
    curves: dict
    snapshots: dict
    train_seconds: float

    def pair(self, seed: int, step: int) -> Pair:
        p, s = self.snapshots[step][self.seeds.index(seed)]
        return Pair(modules=self.modules, params=p, stats=s, common=self.common, setting=self.variant.name,
                    train_seconds=self.train_seconds)


def _sets(split: dict, v: Variant, part: int) -> dict:
    return {"a": split["a"][part], "b": split["a" if v.same_data else "b"][part]}


def train_group(variants: Sequence[Variant], split: dict, seeds: Sequence[int], *, model_cfg, optim_cfg,
                num_steps: int, batch_size: int, rp_fraction: float, common: Sequence[int], num_classes: tuple,
                eval_steps: Sequence[int], log: Callable[[str], None] = print,
                pretrained: dict | None = None, dcc_weight: float = 1.0, rp_weight: float = 1.0,
                model_b_cfg: ml_collections.ConfigDict | None = None, adapter_width: int | None = None
                ) -> list[Trained]:
    """Train variants that share a group key (they differ in IIW) over `seeds`, as one member axis.

    `split[seed]` = {'a': (fit, val), 'b': (fit, val)} Datasets (a validation Dataset holds its images in
    test_*); with val None no validation curve is followed, the snapshots are still taken at `eval_steps`.
    `pretrained[seed]` = (extractor params, stats) for variants that start from pretrained weights. With
    `model_b_cfg`, network b has an extractor of that architecture (both adapted to `adapter_width` channels)."""
    v0 = variants[0]
    assert all(v.group_key() == v0.group_key() for v in variants)
    program = v0.program(dcc=any(v.dcc for v in variants))
    if any(v.same_data for v in variants) and num_classes[0] != num_classes[1]:
        raise ValueError("compat same-data variants need tasks with the same number of classes.")
    mods = modules_for(model_cfg, program, num_classes[0], num_classes[1], len(common), model_b_cfg=model_b_cfg,
                       adapter_width=adapter_width)
    image_shape = split[seeds[0]]["a"][0].image_shape
    roster = [(v, s) for v in variants for s in seeds]
    inits = [init_member(mods, v, s, image_shape, (pretrained or {}).get(s)) for v, s in roster]
    # One compiled program makes every member's optimizer state (eagerly, each parameter shape compiled its own).
    init_opt = init_opt_program(optim_cfg, program)
    state = pack([{"params": p, "stats": s, "opt": init_opt(p)} for p, s in inits])
    fit = [_sets(split[s], v, 0) for v, s in roster]
    val = [_sets(split[s], v, 1) for v, s in roster]
    member_seeds, member_variants = [s for _, s in roster], [v for v, _ in roster]
    optim_json = json.dumps(optim_cfg.to_dict(), sort_keys=True, default=str)
    curves = {(v.name, s): [] for v, s in roster}
    snapshots, counts, t0 = {}, {"a": 0, "b": 0}, time.time()
    eval_at = sorted({int(e) for e in eval_steps if 0 < int(e) <= num_steps} | {num_steps})
    steps = plan(v0.schedule, num_steps)
    for i, (task, train_shared) in enumerate(steps):
        fn = member_step(mods, program, task, train_shared, tuple(common), max(num_classes), float(rp_fraction),
                         optim_json, num_steps)
        batch = member_batches(fit, member_seeds, member_variants, task, counts[task], batch_size,
                               dcc_weight=dcc_weight, rp_weight=rp_weight)
        state, metrics = fn(state, batch)
        counts[task] += 1
        done = min(counts.values()) if v0.schedule == "joint" else (num_steps if i == len(steps) - 1 else 0)
        if done in eval_at and done not in snapshots and (v0.schedule != "joint" or counts["a"] == counts["b"]):
            snapshots[done] = [(t["params"], t["stats"]) for t in unpack(state)]
            for m, (v, s) in enumerate(roster):
                if val[m]["a"] is not None:
                    p, st = snapshots[done][m]
                    curves[(v.name, s)].append(dict(step=done, **val_metrics(mods, p, st, common, val[m])))
            followed = [c[-1]["recombination"] for c in curves.values() if c]
            loss = float(np.mean(np.asarray(metrics["loss"])))
            log(f"[compat {'/'.join(v.name for v in variants)} {v0.schedule}] step {done}/{num_steps} "
                f"task loss {loss:.3f}" + (f" val recombination {100 * np.mean(followed):.1f}%" if followed else "")
                + f" ({time.time() - t0:.0f}s)")
    seconds = time.time() - t0
    out = []
    for v in variants:
        idx = [m for m, (w, _) in enumerate(roster) if w is v]
        out.append(Trained(variant=v, modules=mods, common=list(common), seeds=list(seeds),
                           curves={s: curves[(v.name, s)] for s in seeds},
                           snapshots={k: [snap[m] for m in idx] for k, snap in snapshots.items()},
                           train_seconds=seconds / len(variants)))
    return out


def train_variants(variants: Sequence[Variant], split: dict, seeds: Sequence[int], **kw) -> dict:
    """{variant name: Trained}, variants grouped by shape so that each group compiles once."""
    for v in variants:
        check_variant(v)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"compat variants need distinct names, got {names}.")
    groups: dict = {}
    for v in variants:
        groups.setdefault(v.group_key(), []).append(v)
    out = {}
    for group in groups.values():
        for trained in train_group(group, split, seeds, **kw):
            out[trained.variant.name] = trained
    return {n: out[n] for n in names}


def train_pair(ds_a, ds_b, *, setting: tuple[bool, bool, bool], options: ml_collections.ConfigDict,
               model_cfg: ml_collections.ConfigDict, optim_cfg: ml_collections.ConfigDict, num_steps: int,
               batch_size: int, seed: int = 0, model_b_cfg: ml_collections.ConfigDict | None = None,
               adapter_width: int | None = None, log: Callable[[str], None] = print) -> Pair:
    """Networks a (on ds_a) and b (on ds_b) trained with `setting` = (dcc, rp, iiw) by `options.schedule`,
    `num_steps` updates per network, through the study's code (`train_group`: one member, its minibatches
    alternating, no validation curve). `options` (`default_options`): split (where `model_cfg`'s extractor
    ends), common_classes, DCC/RP loss weights, rp_fraction. With `model_b_cfg`, network b has an extractor of
    that architecture (both extractors adapted to `adapter_width` channels)."""
    check_options(options)
    variant = Variant(*setting, schedule=options.schedule)
    check_variant(variant)
    common = resolve_common_classes(options.get("common_classes"), ds_a.num_classes, ds_b.num_classes)
    model_cfg = ml_collections.ConfigDict(dict(model_cfg.to_dict(), split=options.split))
    [trained] = train_group([variant], {seed: {"a": (ds_a, None), "b": (ds_b, None)}}, [seed], model_cfg=model_cfg,
                            optim_cfg=optim_cfg, num_steps=num_steps, batch_size=batch_size,
                            rp_fraction=float(options.rp_fraction), common=common,
                            num_classes=(ds_a.num_classes, ds_b.num_classes), eval_steps=[num_steps], log=log,
                            dcc_weight=float(options.dcc_weight), rp_weight=float(options.rp_weight),
                            model_b_cfg=model_b_cfg, adapter_width=adapter_width)
    return trained.pair(seed, num_steps)


def train_and_evaluate(ds_a, ds_b, **pair_kw) -> tuple[Pair, dict]:
    """`train_pair(ds_a, ds_b, **pair_kw)` and its `recombine.evaluate` metrics on the test sets, with
    train_seconds."""
    pair = train_pair(ds_a, ds_b, **pair_kw)
    return pair, dict(evaluate(pair, ds_a, ds_b), train_seconds=pair.train_seconds)


# Pretrained identical initial weights.

def pretrain_extractor(model_cfg: ml_collections.ConfigDict, ds, *, num_steps: int, batch_size: int,
                       optim_cfg: ml_collections.ConfigDict, seed: int, verbose: bool = False) -> tuple[dict, dict]:
    """(extractor params, extractor BatchNorm statistics) of an extractor trained `num_steps` steps by rotation
    prediction on `ds`'s training images (labels unused): the start of both networks in the pretrained-IIW
    settings (Sec. 4: "we create pre-trained models using self-supervised rotation prediction only (i.e.
    ignoring class labels)", since STL-10 contains ImageNet images). The paper pretrains on ILSVRC-12 at 32x32;
    offline we have two digit datasets, both used by the study, so the pretraining images are another *domain*
    of task a's training images (`compat.pretrain_data`, default `mnist5k/invert`); no test image is seen."""
    if num_steps < 1:
        raise ValueError(f"compat.pretrain_steps must be a positive integer, got {num_steps}.")
    k = ds.num_classes
    mods = build_modules(model_cfg, k, k, k)
    params, stats = init_variables(mods, rng.key(seed, "pretrain"), ds.image_shape, identical_init=False)
    unlabeled = {"a": (ds.train_images, None)}
    trained = train.train_subtrees(
        params, stats, loss_fn=make_rotation_loss(mods), optim_cfg=optim_cfg,
        rules=[("tasks/a/extractor/.*", 1.0), ("shared/rp/.*", 1.0)], default_mult=0.0,
        batch_fn=lambda step: data.multitask_batch(unlabeled, step, batch_size, rng.seed(seed, "pretrain")),
        num_steps=int(num_steps), seed=seed, name=f"pretrain/{ds.name}", log_every=max(1, int(num_steps)),
        verbose=verbose)
    return trained.params["tasks"]["a"]["extractor"], trained.model_state["tasks"]["a"]["extractor"]
