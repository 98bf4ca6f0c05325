"""The templates experiment over seeds: self-organisation with vs without the clustering regulariser, and
transfer from the regularised sources, as per-seed numbers that `modular.protocol` turns into mean ± SE and
claims.

Every seed trains the same tasks twice on the same data: with the recipe's regularisers and with none
(clustering and entropy weights 0), so the accuracy cost of the regulariser is a paired difference. The
regularised tree then serves as the source bank for the new task of the transfer table.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from modular import data, protocol
from modular.methods.templates.multitask import Outcome, Recipe, train_multitask
from modular.methods.templates.signatures import signature_stats

REGULARISED, UNREGULARISED = "regularised", "unregularised"


def organisation(summaries: Mapping[str, dict]) -> dict:
    """Per task: one-hotness (mean over layers of max_k xi), per layer max_k xi, the argmax signature, its runs
    and progressiveness (`signatures.progressiveness`)."""
    return {name: dict(one_hotness=float(s["one_hotness"]),
                       layer_one_hotness=[float(v) for v in np.max(s["xi"], axis=-1)],
                       signature=list(s["signature"]), **signature_stats(s["signature"]))
            for name, s in summaries.items()}


def layer_agreement(signatures: Sequence[Sequence[int]]) -> list[float]:
    """Per layer: the fraction of task pairs whose argmax template is the same (1 = all tasks share it).

    The paper (Fig. 2, one task on several domains) finds late layers shared and early layers specialised,
    i.e. agreement growing with depth."""
    sigs = np.asarray(signatures)
    n = len(sigs)
    if n < 2:
        return [1.0] * (sigs.shape[1] if sigs.ndim == 2 else 0)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    return [float(np.mean([sigs[i, l] == sigs[j, l] for i, j in pairs])) for l in range(sigs.shape[1])]


def half_means(values: Sequence[float]) -> tuple[float, float]:
    """(mean of the first half, mean of the second half) of per-layer values (middle layer left out if odd)."""
    v = np.asarray(values, np.float64)
    h = len(v) // 2
    return float(v[:h].mean()), float(v[len(v) - h:].mean())


@dataclasses.dataclass
class SeedRun:
    """One seed's regularised and unregularised multitask runs (the regularised tree kept for transfer)."""
    seed: int
    outcomes: dict            # REGULARISED / UNREGULARISED -> Outcome
    trained: object           # the regularised run's train.Trained

    def record(self) -> dict:
        """JSON-ready per-seed numbers: accuracy and organisation of both runs, cross-task layer agreement."""
        out = dict(seed=self.seed)
        for kind, o in self.outcomes.items():
            org = organisation(o.summaries)
            agreement = layer_agreement([v["signature"] for v in org.values()])
            out[kind] = dict(accuracy=dict(o.accuracy), organisation=org, layer_agreement=agreement,
                             mean_one_hotness=float(np.mean([v["one_hotness"] for v in org.values()])),
                             mean_progressiveness=float(np.mean([v["progressiveness"] for v in org.values()])),
                             seconds=o.extra.get("seconds"))
        return out


def seeded(recipe: Recipe, seed: int) -> Recipe:
    """The recipe of one seed: its own seed and its own directory (`workdir/seed<N>`), so that no seed resumes
    from another seed's checkpoints."""
    workdir = None if recipe.workdir is None else os.path.join(recipe.workdir, f"seed{int(seed)}")
    return dataclasses.replace(recipe, seed=int(seed), workdir=workdir)


def unregularised(recipe: Recipe) -> Recipe:
    """The same recipe with every mixture regulariser off."""
    return dataclasses.replace(recipe, clustering_weight=0.0, entropy_weight=0.0)


def multitask_seeds(model_cfg, recipe: Recipe, datasets: Sequence[data.Dataset], seeds: Sequence[int],
                    log: Callable[[str], None] = print) -> list[SeedRun]:
    """For each seed: the tasks trained jointly with the recipe's regularisers and without any."""
    runs = []
    for i, seed in enumerate(seeds):
        r = seeded(recipe, seed)
        outcomes, trained = {}, None
        for kind, rec in ((REGULARISED, r), (UNREGULARISED, unregularised(r))):
            log(f"templates: seed {seed} ({i + 1}/{len(seeds)}), {kind} multitask training")
            outcome, t = train_multitask(model_cfg, rec, datasets, stage=kind)
            outcomes[kind] = outcome
            trained = trained or t
        runs.append(SeedRun(int(seed), outcomes, trained))
    return runs


def multitask_claims(records: Sequence[dict], *, one_hot_threshold: float, accuracy_tolerance: float) -> list[dict]:
    """The paper's self-organisation claims and the regulariser's accuracy cost, decided from intervals."""
    reg = [r[REGULARISED] for r in records]
    unreg = [r[UNREGULARISED] for r in records]
    claims = [protocol.claim_above(
        f"Mixture weights end close to one-hot: mean one-hotness over tasks > {one_hot_threshold:g} "
        "(with the clustering regulariser)", [r["mean_one_hotness"] for r in reg], one_hot_threshold,
        name="one-hotness")]
    for task in reg[0]["accuracy"]:
        claims.append(protocol.claim_within(
            f"{task}: the regulariser costs at most {100 * accuracy_tolerance:g} points of accuracy",
            [r["accuracy"][task] for r in reg], [r["accuracy"][task] for r in unreg], tolerance=accuracy_tolerance,
            names=(REGULARISED, UNREGULARISED)))
    claims.append(protocol.claim_above(
        "Signatures are progressive: runs of one template lengthen with depth (progressiveness > 0)",
        [r["mean_progressiveness"] for r in reg], 0.0, name="progressiveness"))
    if len(reg[0]["accuracy"]) > 1:
        early_late = [half_means(r["layer_agreement"]) for r in reg]
        claims.append(protocol.claim_greater(
            "One task on several domains shares late layers and specialises early ones (cross-task argmax "
            "agreement, late half > early half)", [late for _, late in early_late], [early for early, _ in early_late],
            names=("late", "early"), scale=1.0, unit=""))
    claims.append(protocol.claim_greater(
        "The clustering regulariser makes mixtures more one-hot than no regulariser",
        [r["mean_one_hotness"] for r in reg], [r["mean_one_hotness"] for r in unreg],
        names=(REGULARISED, UNREGULARISED), scale=1.0, unit=""))
    return claims


def transfer_claims(per_seed: Sequence[Mapping[str, float]]) -> list[dict]:
    """The paper's Table 2 ordering, from per-seed target test accuracies of each init."""
    have = set.intersection(*(set(a) for a in per_seed))
    col = lambda k: [a[k] for a in per_seed]
    claims = []
    if {"source", "random"} <= have:
        claims.append(protocol.claim_greater("Transfer (Table 2): xi from the best source beats a random xi",
                                             col("source"), col("random"), names=("source", "random")))
    for init in ("source", "random"):
        if {init, "bn_logits"} <= have:
            claims.append(protocol.claim_within(
                f"Transfer (Table 2): {init} xi beats or matches (within 1 point) the BN + logits baseline",
                col(init), col("bn_logits"), tolerance=0.01, names=(init, "bn_logits")))
    if {"accuracy_interp", "random"} <= have:
        claims.append(protocol.claim_greater(
            "Transfer: xi interpolated by normalised source accuracies beats a random xi",
            col("accuracy_interp"), col("random"), names=("accuracy_interp", "random")))
    return claims


def adaptation_claims(per_seed: Sequence[Mapping[str, float]]) -> list[dict]:
    """The paper's Table 3 claims from per-seed target test accuracies of `compare_adaptation`."""
    have = set.intersection(*(set(a) for a in per_seed))
    col = lambda k: [a[k] for a in per_seed]
    claims = []
    for key in sorted(k for k in have if k.startswith("mixture_") and "supervised" not in k):
        claims.append(protocol.claim_greater(f"Adaptation (Table 3): {key} improves over the source model",
                                             col(key), col("source_only"), names=(key, "source_only")))
        if "target_bn_stats_only" in have:
            claims.append(protocol.claim_greater(
                f"Adaptation: {key} improves over re-estimating the target's BN statistics alone",
                col(key), col("target_bn_stats_only"), names=(key, "bn_stats_only")))
        plain = key.replace("mixture_", "plain_input_adapter_", 1)
        if plain in have:
            claims.append(protocol.claim_greater(
                f"Adaptation (Table 3): tuning xi ({key}) beats tuning a plain net's input adapter the same way",
                col(key), col(plain), names=(key, plain)))
    return claims


def transfer_seeds(runs: Sequence[SeedRun], recipe: Recipe, compare: Callable, sources: Sequence[data.Dataset],
                   target: data.Dataset, log: Callable[[str], None] = print) -> list:
    """Per seed: `compare(recipe, sources, target, trained_sources)` (a configured `compare_transfer_inits`) on
    that seed's regularised tree; returns the Outcomes."""
    outcomes = []
    for run in runs:
        log(f"templates: seed {run.seed}, transfer to {target.name}")
        outcomes.append(compare(seeded(recipe, run.seed), sources, target, (run.outcomes[REGULARISED], run.trained)))
    return outcomes


def transfer_record(outcome: Outcome) -> dict:
    """JSON-ready numbers of one seed's transfer comparison."""
    return dict(accuracy=outcome.accuracy, source_task=outcome.extra["source_task"],
                validation_scores=outcome.extra["validation_scores"], interpolation=outcome.extra["interpolation"],
                organisation=organisation(outcome.summaries))
