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
from modular.methods.patches import lr_rules
from modular.methods.templates import paper as P, report, study
from modular.models import isometric
from modular.projection.phases import Phase, phase

# What the paper reports for each mode (section / table), in our words; its numbers are in
# `modular.methods.templates.paper` and appear beside ours in the tables and claims.
PAPER = {
    "signatures": "Table 5 / App. B (CIFAR-100, K=2-8 templates, L=4-32 layers): sequential signatures beat "
                  "cyclic and random ones, and learned mixtures come close to sequential (e.g. K=4, L=16: "
                  "cyclic 63.3, sequential 66.7, random 65.1, mixture 66.4).",
    "multitask": "Sec. 4.2 / App. B: mixtures often end near one-hot even unregularised, in progressive "
                 "signatures; Sec. 4.3 / Fig. 2(b): one task on several domains shares late layers and "
                 "specialises early ones; Table 12: digit domains co-trained, compositional vs isometric.",
    "transfer": "Sec. 4.3 / Table 2: xi from the best source ends above the plain BN + logits baseline on 3 of 4 "
                "datasets (mean +0.98 points), xi from the other sources below it on all 4 (FOOD: mean -7.98), "
                "and a random xi is worse than a source xi; Table 9: interpolating the sources' xi (by accuracy "
                "or learned) beats a random start (Digits -> USPS: 96.37 / 96.61 vs 96.05).",
    "adapt": "Table 3 / Sec. 4.4 (Digits -> USPS): tuning only the target's xi without labels improves on the "
             "copied source (adversarial 96.05 -> 98.33, moment matching -> 96.85); tuning a plain net's input "
             "adapter ends higher in 4 of 6 cells (Digits: 98.12 / 96.93); supervised xi tuning reaches 98.25.",
    "single": "Sec. 4.2: a template-mixture net with K < L templates trains close to a sequential signature and "
              "above cyclic / random ones (Table 5).",
}


def _t12(*names: str, label: str = "") -> dict:
    rows = [P.TABLE12[n] for n in names]
    where = (label or "/".join(names)) + ", T12"
    fmt = lambda k: (P.cell(rows[0][k], where) if len(rows) == 1 else
                     f"{min(r[k] for r in rows):.2f}-{max(r[k] for r in rows):.2f} ({where})")
    return dict(isometric=fmt("isometric"), compositional=fmt("compositional"))


def _adapt_cell(before: str, after: str, row: str) -> str:
    d = P.TABLE3_DIGITS
    return f"{d[before]:.2f} -> {d[after]:.2f} ({row}, Digits->USPS, T3)"


# The paper's numbers beside each row of our multi-seed tables, with the paper's dataset and table (T<n>).
PAPER_ROWS = {
    "multitask": {"mnist5k": _t12("MNIST"),
                  # the paper has no rotated / inverted / blurred domains: its corrupted-MNIST domains instead
                  **{t: _t12("C-MNIST (shot noise)", "C-MNIST (shear)", "C-MNIST (scale)",
                          label="C-MNIST shot noise/shear/scale")
                     for t in ("mnist5k/rotate", "mnist5k/invert", "mnist5k/blur")},
                  "mean": dict(isometric=P.cell(P.mean(r["isometric"] for r in P.TABLE12.values()),
                                                "mean of 5 domains, T12"),
                               compositional=P.cell(P.mean(r["compositional"] for r in P.TABLE12.values()),
                                                    "mean of 5 domains, T12"))},
    "adapt": {
        "target BN statistics only": "- (not in the paper)",
        "mixture_moment_matching": _adapt_cell("comp_source_only", "comp_moment_matching", "Comp. MM = M3SDA"),
        "mixture_adversarial_adda": _adapt_cell("comp_source_only", "comp_adversarial", "Comp. Adversarial"),
        "mixture_adversarial_grl": _adapt_cell("comp_source_only", "comp_adversarial", "Comp. Adversarial"),
        "mixture_m3sda": _adapt_cell("comp_source_only", "comp_moment_matching", "Comp. MM = M3SDA"),
        "mixture_supervised_upper_bound (labels)": _adapt_cell("comp_source_only", "comp_supervised",
                                                               "Comp. supervised"),
        "plain_input_adapter_moment_matching": _adapt_cell("source_only", "moment_matching_ia", "MM (IA)"),
        "plain_input_adapter_adversarial_adda": _adapt_cell("source_only", "adversarial_ia", "Adversarial (IA)"),
        "plain_input_adapter_adversarial_grl": _adapt_cell("source_only", "adversarial_ia", "Adversarial (IA)"),
        "plain_input_adapter_m3sda": _adapt_cell("source_only", "moment_matching_ia", "MM (IA)"),
    },
    "transfer": dict(
        plain_bn_logits=f"{P.TABLE2['EMNIST']['baseline']} EMNIST; {P.table2_mean('baseline'):.1f} mean of 4 (Baseline, T2)",
        source=f"{P.TABLE2['EMNIST']['imagenet']} EMNIST; {P.table2_mean('imagenet'):.1f} mean of 4 (IMAGENET xi, T2)",
        worst_source=f"{P.TABLE2['EMNIST']['food']} EMNIST; {P.table2_mean('food'):.1f} mean of 4 (FOOD xi, T2)",
        random=f"{P.TABLE9_DIGITS_FT['random']} (random init, Digits->USPS ft., T9)",
        bn_logits="- (Sec. 4.3 compares, reports no number)",
        accuracy_interp=f"{P.TABLE9_DIGITS_FT['accuracy_interp']} (acc-based, Digits->USPS ft., T9)",
        learned_interp=f"{P.TABLE9_DIGITS_FT['learned_interp']} (learned, Digits->USPS ft., T9)",
        learned_interp_tuned="-"),
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
    tables = {}
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
    plain = None
    if config.multitask_transfer and config.transfer_inits:
        target = _load(config, config.transfer_target)
        outcomes = study.transfer_seeds(runs, recipe, lambda *a: _transfer(config, *a), datasets, target, log=_log)
        per_seed = [o.accuracy for o in outcomes]
        if all(o.extra.get("plain") for o in outcomes):
            plain = [o.extra["plain"]["source_accuracy"] for o in outcomes]
        tables["templates_transfer"] = report.transfer_table(
            per_seed, PAPER_ROWS["transfer"], f"templates/transfer: {len(datasets)} regularised sources -> "
            f"{target.name}, target test accuracy (%), mean ± SE over {len(per_seed)} seed(s); source chosen on the "
            f"target's validation split; paper = Table 2 (natural-image sources -> 4 datasets: its EMNIST cell and "
            f"the mean of 4) or Table 9 (Digits -> USPS)")
        claims += study.transfer_claims(per_seed)
        plots.append(report.mixture_heatmap(workdir, outcomes[0].summaries,
                                            f"transfer seed {runs[0].seed}: target xi per init"))
        results["transfer"] = dict(per_seed=[study.transfer_record(o) for o in outcomes],
                                   accuracy=protocol.to_dicts(protocol.aggregate(per_seed), 100))
    tables = dict(report.multitask_tables(records, PAPER_ROWS["multitask"], plain), **tables)
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
    (k, l), row = P.table5_row(config.model.num_templates, config.model.depth)
    results["paper_cells"] = {kind: f"{row[col]} (CIFAR-100, K={k}, L={l}, T5)" for kind, col in P.TABLE5_KINDS.items()}
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
        results["table"], text = report.accuracy_table(results, f"templates/{mode}: test accuracy (%)",
                                                       results.get("paper_cells"))
        if results.get("extra_text"):
            text += "\n" + results["extra_text"]
        text += f"\npaper: {PAPER[mode]}"
    else:
        text = reporting.format_table([dict(setting=k, ours=100 * v) for k, v in results["accuracy"].items()])
    if jax.process_index() == 0:
        print(text, flush=True)
    return results


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = ("evaluation; per-task mixing of the template bank (the trunk is counted at the summed batch); "
             "adapt mode: the frozen source's forward passes, M3SDA's second classifier, the BN-statistics "
             "control and the plain-net baseline")


def phases(config) -> list[Phase]:
    model = ml_collections.ConfigDict(dict(config.model.to_dict(), name="isometric"))
    tasks = list(config.tasks) if config.mode != "single" else list(config.tasks[:1])
    # multitask trains the tasks with and without the clustering regulariser, then transfers from them
    runs = 2 if config.mode == "multitask" else 1
    out = [phase(config, f"{config.mode} ({len(tasks)} tasks)", model=model, data=tasks[0],
                 batch_size=config.batch_size * len(tasks), repeats=runs)]
    transfers = {"transfer": len(config.get("transfer_inits") or []),
                 "multitask": len(config.get("transfer_inits") or []) if config.get("multitask_transfer") else 0,
                 "adapt": len(config.get("adapt_methods") or [])}.get(config.mode, 0)
    m3sda = config.mode == "adapt" and "m3sda" in (config.get("adapt_methods") or [])
    if config.mode == "adapt":  # M3SDA counted below; + the supervised upper bound (labels, xi only)
        transfers += 1 - int(m3sda)
    if transfers:
        out.append(phase(config, "mixture weights on the target", model=model, data=config.tasks[0],
                         steps=config.transfer_steps, rules=lr_rules("mixture"), repeats=transfers))
    if m3sda:
        # each iteration: step A (classifiers and xi), B (classifiers only), C x generator_steps (xi only)
        settings = T.M3SDA(**config.get("m3sda", {}))
        iterations, n = settings.iterations(config.transfer_steps), int(settings.generator_steps)
        out.append(phase(config, f"M3SDA steps A + {n} x C (xi)", model=model, data=config.tasks[0],
                         steps=iterations * (1 + n), rules=lr_rules("mixture")))
        out.append(phase(config, "M3SDA step B (classifiers)", model=model, data=config.tasks[0],
                         steps=iterations, rules=lr_rules("last_layer")))
    return out
