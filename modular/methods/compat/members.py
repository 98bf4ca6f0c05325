"""Training several pairs (settings x seeds of one shape) in one compiled program, the paper's way: the two
networks take turns, one minibatch each (a step of network a updates only a's own parameters and the shared
heads it used; b's parameters and optimiser state do not move), instead of one summed step.

A *variant* is one row of a study (DCC/RP/IIW, schedule, RP transforms, shared or private RP heads, same
data). Variants that differ only in IIW, DCC weight, data and seed have the same shapes and the same
program, so their pairs (*members*) train together: stacked on a leading axis under `jax.vmap` on
accelerators; on CPU one compiled single-member program called member after member, since XLA:CPU turns a
vmapped convolution with per-member weights into a grouped convolution (4x slower than the loop, ResNet-8,
2 cores) and `jax.lax.map` runs the step 6x slower than the plain program.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import losses, models, rng
from modular.data import pipeline
from modular.methods.compat import optimizer, pretext
from modular.platform import xla_cpu
from modular.methods.compat.losses import common_label_map
from modular.methods.compat.modules import CompatModules, build_modules, init_variables, run_module
from modular.methods.compat.schedule import setting_name

SCHEDULES = ("joint", "incremental", "incremental_ba")
RP_HEADS = ("shared", "private")


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
    pretext.num_classes(v.rp_transforms)


def plan(schedule: str, num_steps: int) -> list[tuple[str, bool]]:
    """[(network stepping, shared heads train)] for every step: 'joint' alternates a and b (num_steps each);
    'incremental' trains a (with the heads) then b against a's frozen heads; 'incremental_ba' the reverse."""
    if schedule == "joint":
        return [(t, True) for _ in range(num_steps) for t in "ab"]
    first, second = ("a", "b") if schedule == "incremental" else ("b", "a")
    return [(first, True)] * num_steps + [(second, False)] * num_steps


def modules_for(model_cfg: ml_collections.ConfigDict, v: Variant, num_a: int, num_b: int, num_common: int
                ) -> CompatModules:
    mods = build_modules(model_cfg, num_a, num_b, num_common)
    return dataclasses.replace(mods, rp_head=models.build_head(model_cfg, pretext.num_classes(v.rp_transforms)))


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
    steps = plan(v.schedule, num_steps)
    shared_updates = sum(1 for _, train_shared in steps if train_shared)
    tx_net = optimizer.build(optim_cfg, num_steps)
    return {"a": tx_net, "b": tx_net, "shared": optimizer.build(optim_cfg, max(1, shared_updates))}


def init_opt_state(txs: dict, v: Variant, params: dict) -> dict:
    heads = sorted({h for t in "ab" for h in used_heads(v, t)})
    return {"a": txs["a"].init(params["tasks"]["a"]), "b": txs["b"].init(params["tasks"]["b"]),
            "shared": txs["shared"].init({h: params["shared"][h] for h in heads})}


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
            views = pretext.apply(x[:n], ids, v.rp_transforms)
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
            b["rp_ids"] = pretext.draw(np.random.default_rng(rng.seed(s, "rp_ids", task, step)), n, v.rp_transforms)
        out.append(b)
    return {k: np.stack([b[k] for b in out]) for k in out[0]}


def stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: np.asarray(x[i]), tree)
