"""A study: variants x seeds trained with alternating minibatches, recombination followed on validation data
while they train, the step count chosen on validation, then the test set read once at that step.

Each seed carves its own validation split from both tasks' training data (`protocol.validation_split`);
every curve point and the step choice use only it. `choose_steps` picks the earliest evaluated step after
which no variant's mean validation recombination moves by more than `tolerance` (training has stopped
changing the answer); `test_metrics` then evaluates the snapshot of that step on the real test sets.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from typing import Callable, Sequence

import jax
import numpy as np

from modular import protocol
from modular.methods.compat import members as M
from modular.methods.compat import similarity
from modular.methods.compat.modules import run_module
from modular.methods.compat.recombine import evaluate, recombination_accuracy
from modular.methods.compat.schedule import Pair


@dataclasses.dataclass
class Trained:
    """One variant's pairs: curves[seed] = [{step, recombination, a_to_b, b_to_a, own}] on validation and
    snapshots[step] = per-seed (params, stats) host trees."""
    variant: M.Variant
    modules: object
    common: list[int]
    seeds: list[int]
    curves: dict
    snapshots: dict
    train_seconds: float

    def pair(self, seed: int, step: int) -> Pair:
        p, s = self.snapshots[step][self.seeds.index(seed)]
        return Pair(modules=self.modules, params=p, stats=s, common=self.common, setting=self.variant.name,
                    history=[], train_seconds=self.train_seconds)


def splits(ds_a, ds_b, seeds: Sequence[int], val_fraction: float) -> dict:
    """{seed: {'a': (fit, val), 'b': (fit, val)}}, each carved from that task's training data."""
    return {s: {t: protocol.validation_split(ds, val_fraction, s) for t, ds in (("a", ds_a), ("b", ds_b))}
            for s in seeds}


def _sets(split: dict, v: M.Variant, part: int) -> dict:
    return {"a": split["a"][part], "b": split["a" if v.same_data else "b"][part]}


def val_metrics(mods, params, stats, common, val: dict) -> dict:
    """Recombination and own accuracy (BN batch statistics, the paper's protocol) on validation sets."""
    acc = {f"{e}{h}": recombination_accuracy(mods, params, stats, e, h, val[e].test_images, val[e].test_labels,
                                             common, mode="batch_stats") for e in "ab" for h in "ab"}
    return dict(recombination=(acc["ab"] + acc["ba"]) / 2, a_to_b=acc["ab"], b_to_a=acc["ba"],
                own=(acc["aa"] + acc["bb"]) / 2)


def train_group(variants: Sequence[M.Variant], split: dict, seeds: Sequence[int], *, model_cfg, optim_cfg,
                num_steps: int, batch_size: int, rp_fraction: float, common: Sequence[int], num_classes: tuple,
                eval_steps: Sequence[int], log: Callable[[str], None] = print,
                pretrained: dict | None = None, dcc_weight: float = 1.0, rp_weight: float = 1.0) -> list[Trained]:
    """Train variants that share a group key (they differ in IIW) over `seeds`, as one member axis.
    `pretrained[seed]` = (extractor params, stats) for variants that start from pretrained weights."""
    v0 = variants[0]
    assert all(v.group_key() == v0.group_key() for v in variants)
    program = v0.program(dcc=any(v.dcc for v in variants))
    if any(v.same_data for v in variants) and num_classes[0] != num_classes[1]:
        raise ValueError("compat same-data variants need tasks with the same number of classes.")
    mods = M.modules_for(model_cfg, program, num_classes[0], num_classes[1], len(common))
    image_shape = split[seeds[0]]["a"][0].image_shape
    roster = [(v, s) for v in variants for s in seeds]
    inits = [M.init_member(mods, v, s, image_shape, (pretrained or {}).get(s)) for v, s in roster]
    txs = M.optimisers(optim_cfg, program, num_steps)
    state = M.pack([{"params": p, "stats": s, "opt": M.init_opt_state(txs, program, p)} for p, s in inits])
    fit = [_sets(split[s], v, 0) for v, s in roster]
    val = [_sets(split[s], v, 1) for v, s in roster]
    member_seeds, member_variants = [s for _, s in roster], [v for v, _ in roster]
    optim_json = json.dumps(optim_cfg.to_dict(), sort_keys=True, default=str)
    curves = {(v.name, s): [] for v, s in roster}
    snapshots, counts, t0 = {}, {"a": 0, "b": 0}, time.time()
    eval_at = sorted({int(e) for e in eval_steps if 0 < int(e) <= num_steps} | {num_steps})
    steps = M.plan(v0.schedule, num_steps)
    for i, (task, train_shared) in enumerate(steps):
        fn = M.member_step(mods, program, task, train_shared, tuple(common), max(num_classes), float(rp_fraction),
                           optim_json, num_steps)
        batch = M.member_batches(fit, member_seeds, member_variants, task, counts[task], batch_size,
                                 dcc_weight=dcc_weight, rp_weight=rp_weight)
        state, metrics = fn(state, batch)
        counts[task] += 1
        done = min(counts.values()) if v0.schedule == "joint" else (num_steps if i == len(steps) - 1 else 0)
        if done in eval_at and done not in snapshots and (v0.schedule != "joint" or counts["a"] == counts["b"]):
            snapshots[done] = [(t["params"], t["stats"]) for t in M.unpack(state)]
            for m, (v, s) in enumerate(roster):
                p, st = snapshots[done][m]
                curves[(v.name, s)].append(dict(step=done, **val_metrics(mods, p, st, common, val[m])))
            mean = np.mean([c[-1]["recombination"] for c in curves.values()])
            loss = float(np.mean(np.asarray(metrics["loss"])))
            log(f"[compat {'/'.join(v.name for v in variants)} {v0.schedule}] step {done}/{num_steps} "
                f"task loss {loss:.3f} val recombination {100 * mean:.1f}% ({time.time() - t0:.0f}s)")
    seconds = time.time() - t0
    out = []
    for v in variants:
        idx = [m for m, (w, _) in enumerate(roster) if w is v]
        out.append(Trained(variant=v, modules=mods, common=list(common), seeds=list(seeds),
                           curves={s: curves[(v.name, s)] for s in seeds},
                           snapshots={k: [snap[m] for m in idx] for k, snap in snapshots.items()},
                           train_seconds=seconds / len(variants)))
    return out


def train_variants(variants: Sequence[M.Variant], split: dict, seeds: Sequence[int], **kw) -> dict:
    """{variant name: Trained}, variants grouped by shape so that each group compiles once."""
    for v in variants:
        M.check_variant(v)
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


def mean_curve(trained: Trained, key: str = "recombination") -> dict:
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


@functools.lru_cache(maxsize=16)
def _features_fn(extractor):
    return jax.jit(lambda p, s, x: run_module(extractor, p, s, x, "eval")[0])


def features(mods, params, stats, task: str, images: np.ndarray) -> np.ndarray:
    fn = _features_fn(mods.ext(task))
    p, s = params["tasks"][task]["extractor"], stats["tasks"][task]["extractor"]
    return np.concatenate([np.asarray(fn(p, s, images[i:i + 250])) for i in range(0, len(images), 250)])


def test_metrics(pair: Pair, ds_a, ds_b, *, similarity_images: int = 500) -> dict:
    """`recombine.evaluate` on the test sets plus the two extractors' feature similarity on a's test images
    (linear CKA and per-unit correlation, stored BN statistics)."""
    out = evaluate(pair, ds_a, ds_b)
    x = ds_a.test_images[:similarity_images]
    fa, fb = (features(pair.modules, pair.params, pair.stats, t, x) for t in "ab")
    out.update(cka=similarity.linear_cka(fa, fb), unit_correlation=similarity.unit_correlation(fa, fb))
    return out
