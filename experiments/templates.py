"""Compositional models with template mixtures (Zhmoginov, Sandler, Bashkirova), at CPU scale.

Modes (config.mode): single (one task, learned mixture), signatures (learned vs fixed sequential /
cyclic / random one-hot signatures, paper Table 5), multitask (the default: several digit domains sharing
templates and adapters, paper Fig. 2, over config.seeds with and without the clustering regulariser, then
the transfer table from the regularised sources), transfer (new task on frozen templates, paper Table 2; xi from random, the best
source, an accuracy-weighted or a learned interpolation of all sources' xi, vs the BN + logits baseline),
adapt (tune only the target's xi without labels, by moment matching, adversarially (ADDA / gradient
reversal) or by M3SDA (moments plus the two-classifier discrepancy), vs tuning a plain net's input adapter
the same way, a BN-statistics-only control and supervised xi tuning as the upper bound, paper Table 3).
"""
from __future__ import annotations

import jax
import ml_collections
import numpy as np

from modular import data, protocol, reporting
from modular.methods import templates as T
from modular.methods.templates import report, study
from modular.models import isometric

# The paper's findings we compare against. Its exact table values are not available offline here, so
# we record the qualitative claims each mode checks, never invented numbers.
PAPER = {
    "signatures": "Table 5: learned mixtures ~ sequential signature, both better than cyclic and random.",
    "multitask": "Fig. 2: mixture weights end close to one-hot; one task on several domains shares late "
                 "layers and specialises early ones.",
    "transfer": "Table 2: xi initialised from a good source task beats random init; both beat or match "
                "the 'BN + logits' baseline.",
    "adapt": "Table 3: tuning only the target's mixture weights without labels (moment matching, ADDA, M3SDA) "
             "improves target accuracy over the source model and over tuning only a plain net's input adapter; "
             "supervised mixture tuning is the upper bound.",
    "single": "A template-mixture net with K < L templates trains close to a plain isometric net.",
}

# The paper's finding beside each row of our multi-seed tables (qualitative: no offline copy of its numbers).
PAPER_ROWS = {
    "multitask": dict(accuracy="-", one_hotness="close to one-hot"),
    "adapt": dict(source_only="-", bn_stats="-", mixture="improves (Table 3)", plain="below mixture tuning"),
    "transfer": dict(source="best (Table 2)", random="below source", bn_logits="lowest (baseline)",
                     accuracy_interp="-", learned_interp="-", learned_interp_tuned="-"),
}


def _load(config, name):
    d = config.data
    return data.load(name, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)


def run_single(config, recipe, workdir):
    return report.results(T.train_multitask(config.model, recipe, [_load(config, config.tasks[0])], "single")[0],
                          workdir, "single")


def run_multitask(config, recipe, workdir):
    """Over config.seeds: the tasks with and without the regulariser, claims from intervals, then (if
    config.multitask_transfer) the transfer table from each seed's regularised sources and (if
    config.multitask_adapt) the domain-adaptation table of mode 'adapt'."""
    datasets = [_load(config, n) for n in config.tasks]
    runs = study.multitask_seeds(config.model, recipe, datasets, protocol.seeds(config), log=_log)
    records = [r.record() for r in runs]
    tables = report.multitask_tables(records, PAPER_ROWS["multitask"])
    claims = study.multitask_claims(records, one_hot_threshold=config.one_hot_threshold,
                                    accuracy_tolerance=config.accuracy_tolerance)
    first = runs[0].outcomes
    plots = report.multitask_heatmaps(workdir, records, {k: o.summaries for k, o in first.items()})
    reg = [r[study.REGULARISED] for r in records]
    results = dict(per_seed=records, plots=plots,
                   accuracy=protocol.means(protocol.aggregate([r["accuracy"] for r in reg])),
                   one_hotness={t: float(np.mean([r["organisation"][t]["one_hotness"] for r in reg]))
                                for t in reg[0]["accuracy"]},
                   signature={t: o["signature"] for t, o in reg[0]["organisation"].items()},
                   params=first[study.REGULARISED].counts)
    if config.multitask_transfer and config.transfer_inits:
        target = _load(config, config.transfer_target)
        outcomes = study.transfer_seeds(runs, recipe, lambda *a: _transfer(config, *a), datasets, target, log=_log)
        per_seed = [o.accuracy for o in outcomes]
        tables["templates_transfer"] = report.transfer_table(
            per_seed, PAPER_ROWS["transfer"], f"templates/transfer: {len(datasets)} regularised sources -> "
            f"{target.name}, target test accuracy (%), mean ± SE over {len(per_seed)} seed(s); source chosen on the "
            f"target's validation split")
        claims += study.transfer_claims(per_seed)
        plots.append(report.mixture_heatmap(workdir, outcomes[0].summaries,
                                            f"transfer seed {runs[0].seed}: target xi per init"))
        results["transfer"] = dict(per_seed=[study.transfer_record(o) for o in outcomes],
                                   accuracy=protocol.to_dicts(protocol.aggregate(per_seed), 100))
    tables["templates_claims"] = protocol.claims_table(claims)
    if config.get("multitask_adapt") and config.adapt_methods:
        adapted, adapt_tables, adapt_claims = _adaptation(config, recipe)
        results["adapt"] = _adaptation_record(adapted)
        tables.update(adapt_tables)
        claims = claims + adapt_claims
    results.update(claims=claims, readme_tables=tables, text="\n\n".join(v for k, v in tables.items()
                                                                         if not k.endswith("claims")))
    return results


def _log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _transfer(config, recipe, sources, target, trained_sources=None):
    return T.compare_transfer_inits(
        config.model, recipe, sources, target, inits=config.transfer_inits, num_steps=config.transfer_steps,
        interp_temperature=config.interp_temperature, interp_score_examples=config.interp_score_examples,
        interp_lr_mult=config.interp_lr_mult, interp_tune_steps=config.interp_tune_steps,
        val_fraction=config.data.val_fraction, trained_sources=trained_sources)


def run_signatures(config, recipe, workdir):
    outcome = T.compare_signatures(config.model, recipe, _load(config, config.tasks[0]), config.signature_kinds)
    results, acc = report.results(outcome, workdir, "signatures"), outcome.accuracy
    if {"learned", "cyclic", "random"} <= set(acc):
        results["paper_ordering_holds"] = bool(acc["learned"] >= max(acc["cyclic"], acc["random"]))
    return results


def run_transfer(config, recipe, workdir):
    outcome = _transfer(config, recipe, [_load(config, n) for n in config.tasks], _load(config, config.transfer_target))
    results, acc = report.results(outcome, workdir, "transfer"), outcome.accuracy
    if {"source", "random"} <= set(acc):
        results["paper_ordering_holds"] = bool(acc["source"] >= acc["random"])
    results["extra_text"] = report.interpolation_lines(results["interpolation"])
    return results


def run_adapt(config, recipe, workdir):
    """Over config.seeds: sources pretrained jointly, the best one (on the target's validation split) adapted
    without labels; before/after rows and claims from intervals."""
    per_seed, tables, claims = _adaptation(config, recipe)
    results = report.results(per_seed[0], workdir, "adapt")
    results.update(_adaptation_record(per_seed), claims=claims, text=tables["templates_adapt"], readme_tables=tables)
    return results


def _adaptation(config, recipe):
    """(per-seed outcomes, {readme name: table}, claims) of the adaptation comparison over config.seeds."""
    sources, target = [_load(config, n) for n in config.tasks], _load(config, config.adapt_target)
    per_seed = []
    for seed in protocol.seeds(config):
        _log(f"templates: seed {seed}, adaptation {', '.join(s.name for s in sources)} -> {target.name}")
        outcome = T.compare_adaptation(config.model, study.seeded(recipe, seed), sources, target,
                                       methods=config.adapt_methods, num_steps=config.transfer_steps,
                                       adversarial=T.Adversarial(**config.adversarial),
                                       bn_stats_baseline=config.adapt_bn_stats_baseline,
                                       val_fraction=config.data.val_fraction, score_examples=config.interp_score_examples,
                                       m3sda=T.M3SDA(**config.m3sda))
        per_seed.append(outcome)
    rows = [r["before_after"] for r in (o.extra for o in per_seed)]
    title = (f"templates/adapt: {len(sources)} sources -> {target.name}, target test accuracy (%) before/after "
             f"tuning ({config.transfer_steps} steps each), mean ± SE over {len(per_seed)} seed(s)")
    claims = study.adaptation_claims([o.accuracy for o in per_seed])
    tables = dict(templates_adapt=report.before_after_seeds_table(rows, PAPER_ROWS["adapt"], title),
                  templates_adapt_claims=protocol.claims_table(claims))
    return per_seed, tables, claims


def _adaptation_record(per_seed) -> dict:
    return dict(per_seed=[dict(accuracy=o.accuracy, source=o.extra["source"], before_after=o.extra["before_after"],
                               validation_scores=o.extra["validation_scores"]) for o in per_seed],
                accuracy=protocol.means(protocol.aggregate([o.accuracy for o in per_seed])))


MODES = dict(single=run_single, signatures=run_signatures, multitask=run_multitask, transfer=run_transfer,
             adapt=run_adapt)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    mode = config.get("mode", None)
    if mode not in MODES:
        raise ValueError(f"Unknown templates mode {mode!r}; known: {', '.join(MODES)}.")
    if not config.tasks:
        raise ValueError("config.tasks must name at least one dataset.")
    isometric.check_config(config.model, len(config.tasks))
    if mode != "single" and not config.model.num_templates:
        raise ValueError(f"Mode '{mode}' needs templates (model.num_templates > 0).")
    recipe = T.Recipe(config.optim, config.num_steps, config.batch_size, config.seed, config.mixture_lr_mult,
                      config.entropy_weight, config.clustering_weight, workdir=workdir,
                      checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                      verbose=jax.process_index() == 0)
    results = MODES[mode](config, recipe, workdir)
    results["mode"], results["model"] = mode, config.model.to_dict()
    results["paper"] = PAPER[mode]
    if "text" in results:
        text = results.pop("text") + f"\npaper: {PAPER[mode]}"
    elif mode != "single" or config.model.num_templates:
        results["table"], text = report.accuracy_table(results, f"templates/{mode}: test accuracy (%)")
        if results.get("extra_text"):
            text += "\n" + results["extra_text"]
        text += f"\npaper: {PAPER[mode]}"
    else:
        text = reporting.format_table([dict(setting=k, ours=100 * v) for k, v in results["accuracy"].items()])
    if jax.process_index() == 0:
        print(text, flush=True)
    return results
