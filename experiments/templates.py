"""Compositional models with template mixtures (Zhmoginov, Sandler, Bashkirova), at CPU scale.

Modes (config.mode): single (one task, learned mixture), signatures (learned vs fixed sequential /
cyclic / random one-hot signatures, paper Table 5), multitask (several digit domains sharing templates
and adapters, paper Fig. 2), transfer (new task on frozen templates, paper Table 2; xi from random, the best
source, an accuracy-weighted or a learned interpolation of all sources' xi, vs the BN + logits baseline),
adapt (tune only the target's xi without labels, by moment matching or adversarially (ADDA / gradient
reversal), vs tuning a plain net's input adapter the same way, a BN-statistics-only control and supervised
xi tuning as the upper bound, paper Table 3).
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from modular import data as D, optim, reporting, train
from modular.methods import templates as T, templates_adapt as A, templates_transfer as X
from modular.models import isometric

MODES = ("single", "signatures", "multitask", "transfer", "adapt")

# The paper's findings we compare against. Its exact table values are not available offline here, so
# we record the qualitative claims each mode checks, never invented numbers.
PAPER = {
    "signatures": "Table 5: learned mixtures ~ sequential signature, both better than cyclic and random.",
    "multitask": "Fig. 2: mixture weights end close to one-hot; one task on several domains shares late "
                 "layers and specialises early ones.",
    "transfer": "Table 2: xi initialised from a good source task beats random init; both beat or match "
                "the 'BN + logits' baseline.",
    "adapt": "Table 3: tuning only the target's mixture weights (moment matching) improves target accuracy "
             "over the source model and over tuning only a plain net's input adapter; supervised mixture "
             "tuning is the upper bound.",
    "single": "A template-mixture net with K < L templates trains close to a plain isometric net.",
}


def _load(config, name):
    d = config.data
    return D.load(name, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)


def _train(config, workdir, stage, model_cfg, datasets: dict, signatures: dict, *, params=None, stats=None,
           rules=None, default_mult=1.0, num_classes=None, num_steps=None, loss_fn=None, batch_fn=None):
    """Train the tasks in `datasets` (task id -> Dataset) jointly; returns (params, batch_stats, fit)."""
    if params is None:
        params, stats = isometric.init(model_cfg, jax.random.key(config.seed), config.data.channels,
                                       num_classes or [ds.num_classes for ds in datasets.values()])
    num_steps = num_steps or config.num_steps
    ocfg = optim.override(config.optim, default_mult=default_mult, lr_mults=rules if rules is not None else
                          T.multitask_rules(config.mixture_lr_mult, any(s is not None for s in signatures.values())))
    tx = optim.build(ocfg, params, num_steps)
    loss_fn = loss_fn or T.multitask_loss(model_cfg, tasks=list(datasets), signatures=signatures,
                               entropy_weight=config.entropy_weight, clustering_weight=config.clustering_weight)
    fit = train.fit(state=train.TrainState.create(params, stats, tx), loss_fn=loss_fn, tx=tx,
                    batch_fn=batch_fn or T.batch_fn(datasets, config.batch_size, config.seed), num_steps=num_steps,
                    seed=config.seed, trainable=optim.trainable_mask(params, ocfg),
                    workdir=os.path.join(workdir, stage), checkpoint_every=config.checkpoint_every,
                    log_every=config.log_every, name=f"templates/{stage}", verbose=jax.process_index() == 0)
    return fit.state.params, fit.state.model_state, fit


def _heatmap(workdir, summaries: dict, names: dict, title: str) -> str:
    keys = list(summaries)
    fig, axes = reporting.new_figure(1, len(keys), figsize=(2.6 * len(keys) + 1, 3.2), squeeze=False)
    for ax, k in zip(axes[0], keys):
        xi = summaries[k]["xi"]
        im = ax.imshow(xi.T, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_title(names[k], fontsize=8)
        ax.set_xticks(range(xi.shape[0]))
        ax.set_yticks(range(xi.shape[1]))
        ax.set_xlabel("layer")
        ax.set_ylabel("template")
    fig.colorbar(im, ax=axes[0, -1])
    fig.suptitle(title, fontsize=9)
    return reporting.save_figure(fig, reporting.figure_path(workdir, f"mixture_weights_{title.split()[0]}.png"))


def _report(results, summaries, names, counts, workdir, title):
    results["signature"] = {names[k]: s["signature"] for k, s in summaries.items()}
    results["one_hotness"] = {names[k]: s["one_hotness"] for k, s in summaries.items()}
    results["mixture_weights"] = {names[k]: s["xi"] for k, s in summaries.items()}
    results["params"] = counts
    results["plots"] = [_heatmap(workdir, summaries, names, title)]


def _table(results, mode):
    steps = results.get("steps", {})
    rows = [dict(setting=k, ours=100 * v, one_hotness=results["one_hotness"].get(k),
                 signature=" ".join(map(str, results["signature"].get(k, []))), steps=steps.get(k))
            for k, v in results["accuracy"].items()]
    columns = ["setting", "ours", "one_hotness", "signature"] + (["steps"] if steps else [])
    text = reporting.format_table(rows, columns, title=f"templates/{mode}: test accuracy (%)")
    if results.get("extra_text"):
        text += "\n" + results["extra_text"]
    text += f"\npaper: {PAPER[mode]}"
    results["paper"] = PAPER[mode]
    results["table"] = rows
    return text


def run_single(config, workdir):
    cfg = config.model
    ds = _load(config, config.tasks[0])
    params, stats, fit = _train(config, workdir, "single", cfg, {0: ds}, {0: None})
    results = dict(accuracy={ds.name: T.evaluate(cfg, params, stats, ds, 0)})
    if cfg.num_templates:
        _report(results, T.summary(params, 1, {0: None}), {0: ds.name}, T.param_counts(params, 1), workdir, "single")
    else:  # plain isometric net: nothing to mix
        results.update(params=T.param_counts(params, 1), signature={}, one_hotness={})
    results["seconds"] = fit.seconds
    return results


def run_signatures(config, workdir):
    cfg = config.model
    if not cfg.num_templates:
        raise ValueError("Mode 'signatures' needs templates (model.num_templates > 0).")
    ds = _load(config, config.tasks[0])
    results, summaries, names = dict(accuracy={}), {}, {}
    for i, kind in enumerate(config.signature_kinds):
        sig = T.signature(kind, cfg.depth, cfg.num_templates, config.seed)
        params, stats, _ = _train(config, workdir, f"signature_{kind}", cfg, {0: ds}, {0: sig})
        names[i] = kind
        results["accuracy"][kind] = T.evaluate(cfg, params, stats, ds, 0, sig)
        summaries[i] = T.summary(params, 1, {0: sig})[0]
    _report(results, summaries, names, T.param_counts(params, 1), workdir, "signatures")
    acc = results["accuracy"]
    if {"learned", "cyclic", "random"} <= set(acc):
        results["paper_ordering_holds"] = bool(acc["learned"] >= max(acc["cyclic"], acc["random"]))
    return results


def run_multitask(config, workdir):
    cfg = config.model
    if not cfg.num_templates:
        raise ValueError("Mode 'multitask' needs templates (model.num_templates > 0).")
    datasets = {t: _load(config, name) for t, name in enumerate(config.tasks)}
    sigs = {t: None for t in datasets}
    params, stats, fit = _train(config, workdir, "multitask", cfg, datasets, sigs)
    names = {t: ds.name for t, ds in datasets.items()}
    results = dict(accuracy={ds.name: T.evaluate(cfg, params, stats, ds, t) for t, ds in datasets.items()})
    _report(results, T.summary(params, len(datasets), sigs), names, T.param_counts(params, len(datasets)),
            workdir, "multitask")
    results["seconds"] = fit.seconds
    return results, params, stats


TRANSFER_INITS = ("source", "random", "bn_logits", "accuracy_interp", "learned_interp", "learned_interp_tuned")


def run_transfer(config, workdir):
    """New task on frozen templates/adapters; its xi starts from one of TRANSFER_INITS.

    source: the best source task's xi; random; bn_logits: source xi frozen, only BN + head train;
    accuracy_interp: xi = sum_s w_s xi_s with w from each source model's accuracy on the target's
    training data, then trained like 'source'; learned_interp: only the S interpolation coefficients
    (plus BN + head) learn; learned_interp_tuned: continues learned_interp for interp_tune_steps with xi free.
    """
    cfg = config.model
    unknown = [k for k in config.transfer_inits if k not in TRANSFER_INITS]
    if unknown:
        raise ValueError(f"Unknown transfer init {unknown[0]!r}; known: {', '.join(TRANSFER_INITS)}.")
    multi, src_params, src_stats = run_multitask(config, workdir)
    sources = list(config.tasks)
    target = _load(config, config.transfer_target)
    tgt = len(sources)
    num_classes = [_load(config, n).num_classes for n in sources] + [target.num_classes]
    best_src = max(range(len(sources)), key=lambda t: multi["accuracy"][sources[t]])
    results = dict(accuracy={}, source_accuracy=multi["accuracy"], source_task=sources[best_src], steps={},
                   interpolation={})
    src_logits = X.source_logits(src_params, range(tgt))
    if "accuracy_interp" in config.transfer_inits:
        # a class-balanced draw (the stored training split is sorted by index, and mnist5k by class)
        scoring = target.subset(max_train=int(config.interp_score_examples), seed=config.seed)
        scored = X.source_scores(cfg, src_params, src_stats, scoring.train_images, scoring.train_labels,
                                 range(tgt), target.num_classes, config.seed)
        w = X.interpolation_weights(scored["scores"], config.interp_temperature)
        results["interpolation"]["accuracy_interp"] = dict(
            scores={sources[t]: float(scored["scores"][t]) for t in range(tgt)}, score_kind=scored["kind"],
            weights={sources[t]: float(w[t]) for t in range(tgt)}, temperature=config.interp_temperature)
    summaries, names, learned = {}, {}, None
    for i, kind in enumerate(config.transfer_inits):
        params, stats = isometric.init(cfg, jax.random.key(config.seed + 7), config.data.channels, num_classes)
        params = dict(params, shared=src_params["shared"], **{f"task{t}": src_params[f"task{t}"] for t in range(tgt)})
        stats = dict(stats, **{f"task{t}": src_stats[f"task{t}"] for t in range(tgt)})
        task = dict(params[f"task{tgt}"])
        rules, loss_fn, steps = T.transfer_rules(tgt, kind, config.mixture_lr_mult), None, config.transfer_steps
        if kind in ("source", "bn_logits"):
            task["mixture"] = src_params[f"task{best_src}"]["mixture"]
        elif kind == "accuracy_interp":
            task["mixture"] = X.interpolate_logits(src_logits, w)
        elif kind == "learned_interp_tuned":
            if learned is None:
                raise ValueError("Transfer init 'learned_interp_tuned' must come after 'learned_interp' in "
                                 "config.transfer_inits.")
            params, stats = learned
            task, rules = dict(params[f"task{tgt}"]), T.transfer_rules(tgt, "source", config.mixture_lr_mult)
            steps = config.interp_tune_steps
        params[f"task{tgt}"] = task
        if kind == "learned_interp":
            params = X.init_interp(params, tgt, tgt)
            rules = X.learned_interp_rules(tgt, config.interp_lr_mult)
            loss_fn = X.learned_interpolation_loss(
                T.multitask_loss(cfg, tasks=[tgt], signatures={tgt: None}, entropy_weight=config.entropy_weight,
                                 clustering_weight=config.clustering_weight), tgt, src_logits)
        params, stats, _ = _train(config, workdir, f"transfer_{kind}", cfg, {tgt: target}, {tgt: None},
                                  params=params, stats=stats, rules=rules, default_mult=0.0,
                                  num_steps=steps, loss_fn=loss_fn)
        if kind == "learned_interp":
            params, w_learned = X.materialize(params, tgt, src_logits)
            learned = (params, stats)
            results["interpolation"]["learned_interp"] = dict(weights={sources[t]: float(w_learned[t]) for t in range(tgt)})
        for t in range(tgt):  # frozen shared parts: the source tasks must be untouched
            np.testing.assert_array_equal(params[f"task{t}"]["mixture"], src_params[f"task{t}"]["mixture"])
        results["accuracy"][kind] = T.evaluate(cfg, params, stats, target, tgt)
        results["steps"][kind] = steps + (config.transfer_steps if kind == "learned_interp_tuned" else 0)
        summaries[i], names[i] = T.summary(params, tgt + 1, {t: None for t in range(tgt + 1)})[tgt], kind
    _report(results, summaries, names, T.param_counts(params, tgt + 1), workdir, "transfer")
    acc = results["accuracy"]
    if {"source", "random"} <= set(acc):
        results["paper_ordering_holds"] = bool(acc["source"] >= acc["random"])
    lines = []
    for kind, info in results["interpolation"].items():
        lines.append(f"{kind} weights: " + ", ".join(f"{k} {v:.3f}" for k, v in info["weights"].items()))
        if "scores" in info:
            lines.append(f"{kind} source accuracy on target train data: "
                         + ", ".join(f"{k} {100 * v:.1f}%" for k, v in info["scores"].items()))
    results["extra_text"] = "\n".join(lines)
    return results


def _adapt_batches(src, tgt, batch_size, seed):
    def fn(step):
        return dict(image_src=D.batch_at(src.train_images, src.train_labels, step, batch_size, seed)["image"],
                    image_tgt=D.batch_at(tgt.train_images, tgt.train_labels, step, batch_size, seed + 1)["image"])
    return fn


def _copy_task(params, stats, src: int, dst: int):
    """A new task `dst` starting as a copy of task `src` (mixture, BN patch, head and moving statistics)."""
    return dict(params, **{f"task{dst}": params[f"task{src}"]}), dict(stats, **{f"task{dst}": stats[f"task{src}"]})


ADAPT_METHODS = ("moment_matching", "adversarial")


def _adapt(config, workdir, stage, cfg, tgt, params, stats, *, method, tunable, source_task, target_task, mm):
    """Unsupervised tuning of the `tunable` regex only (everything else frozen) towards the frozen source."""
    kw = dict(source_params=params, source_stats=stats, source_task=source_task, target_task=target_task)
    mult = config.mixture_lr_mult if "mixture" in tunable else 1.0
    if method == "moment_matching":
        p, s, fit = _train(config, workdir, stage, cfg, {target_task: tgt}, {target_task: None}, params=params,
                           stats=stats, rules=[(tunable, mult)], default_mult=0.0, num_steps=config.transfer_steps,
                           batch_fn=mm, loss_fn=A.moment_matching_loss(cfg, **kw))
        return p, s, fit
    if method != "adversarial":
        raise ValueError(f"Unknown adaptation method {method!r}; known: {', '.join(ADAPT_METHODS)}.")
    a = config.adversarial
    start = A.add_discriminator(params, jax.random.key(config.seed + 11), int(cfg.out_dim), int(a.hidden))
    p, s, fit = _train(config, workdir, stage, cfg, {target_task: tgt}, {target_task: None}, params=start,
                       stats=stats, rules=A.adaptation_rules(tunable, a.discriminator_lr_mult, mult),
                       default_mult=0.0, num_steps=config.transfer_steps, batch_fn=mm,
                       loss_fn=A.adversarial_loss(cfg, formulation=a.formulation, weight=a.weight, **kw))
    return A.strip_discriminator(p), s, fit


def _last(fit, key):
    return float(fit.history[-1][key]) if fit.history and key in fit.history[-1] else None


def run_adapt(config, workdir):
    """Source task 0 supervised; target = config.adapt_target without labels (labels only for the bound).

    Every method is reported as target test accuracy before (the source model as is) and after tuning.
    'target BN statistics only' runs the same loop with nothing trainable: it isolates how much of a
    gain comes from the target's moving BN statistics (which every unsupervised run also re-estimates).
    """
    cfg = config.model
    if not cfg.num_templates:
        raise ValueError("Mode 'adapt' needs templates (model.num_templates > 0).")
    unknown = [m for m in config.adapt_methods if m not in ADAPT_METHODS]
    if unknown:
        raise ValueError(f"Unknown adaptation method {unknown[0]!r}; known: {', '.join(ADAPT_METHODS)}.")
    src, tgt = _load(config, config.tasks[0]), _load(config, config.adapt_target)
    steps, mm = config.transfer_steps, _adapt_batches(src, tgt, config.batch_size, config.seed)
    results = dict(accuracy={}, source=src.name, target=tgt.name, adapt_log={})
    rows = []
    # 1. mixture model on the source; target task 1 starts as its copy
    params, stats, _ = _train(config, workdir, "adapt_source", cfg, {0: src}, {0: None}, num_classes=[src.num_classes] * 2)
    params, stats = _copy_task(params, stats, 0, 1)
    before = results["accuracy"]["source_only"] = T.evaluate(cfg, params, stats, tgt, 0)
    results["source_accuracy_on_source"] = T.evaluate(cfg, params, stats, src, 0)
    summaries, names = {0: T.summary(params, 2, {0: None, 1: None})[0]}, {0: "source"}
    xi = r"task1/mixture"
    n_xi = int(np.size(params["task1"]["mixture"]))
    if config.adapt_bn_stats_baseline:
        _, s, _ = _train(config, workdir, "adapt_bn_stats_only", cfg, {1: tgt}, {1: None}, params=params, stats=stats,
                         rules=[], default_mult=0.0, num_steps=steps, batch_fn=mm,
                         loss_fn=A.moment_matching_loss(cfg, source_params=params, source_stats=stats,
                                                        source_task=0, target_task=1))
        after = results["accuracy"]["target_bn_stats_only"] = T.evaluate(cfg, params, s, tgt, 1)
        rows.append(dict(method="target BN statistics only", tuned="-", params=0, before=before, after=after))
    for method in config.adapt_methods:
        p, s, fit = _adapt(config, workdir, f"adapt_mixture_{method}", cfg, tgt, params, stats, method=method,
                           tunable=xi, source_task=0, target_task=1, mm=mm)
        key = "mixture_moment_matching" if method == "moment_matching" else f"mixture_{method}_{config.adversarial.formulation}"
        after = results["accuracy"][key] = T.evaluate(cfg, p, s, tgt, 1)
        results["adapt_log"][key] = {k: _last(fit, k) for k in ("moment_distance", "disc_loss", "domain_accuracy")
                                     if _last(fit, k) is not None}
        rows.append(dict(method=key, tuned="target xi", params=n_xi, before=before, after=after))
        summaries[len(summaries)], names[len(names)] = T.summary(p, 2, {0: None, 1: None})[1], f"target ({method})"
    p, s, _ = _train(config, workdir, "adapt_mixture_supervised", cfg, {1: tgt}, {1: None}, params=params,
                     stats=stats, rules=[(xi, config.mixture_lr_mult)], default_mult=0.0, num_steps=steps)
    after = results["accuracy"]["mixture_supervised_upper_bound"] = T.evaluate(cfg, p, s, tgt, 1)
    rows.append(dict(method="mixture_supervised_upper_bound (labels)", tuned="target xi", params=n_xi,
                     before=before, after=after))
    summaries[len(summaries)], names[len(names)] = T.summary(p, 2, {0: None, 1: None})[1], "target (supervised)"
    # 2. baseline: a plain isometric net of equal depth, only its input adapter adapts
    plain = ml_collections.ConfigDict(dict(cfg.to_dict(), num_templates=0, bn="shared"))
    pp, ps, _ = _train(config, workdir, "adapt_plain_source", plain, {0: src}, {0: None}, rules=[])
    before = results["accuracy"]["plain_source_only"] = T.evaluate(plain, pp, ps, tgt, 0)
    n_in = int(sum(np.size(v) for v in jax.tree.leaves(pp["shared"]["adapter_in"])))
    for method in config.adapt_methods:
        pa, psa, fit = _adapt(config, workdir, f"adapt_plain_input_adapter_{method}",
                              plain, tgt, pp, ps, method=method, tunable=r"shared/adapter_in/.*", source_task=0,
                              target_task=0, mm=mm)
        key = "plain_input_adapter_moment_matching" if method == "moment_matching" else \
            f"plain_input_adapter_{method}_{config.adversarial.formulation}"
        after = results["accuracy"][key] = T.evaluate(plain, pa, psa, tgt, 0)
        results["adapt_log"][key] = {k: _last(fit, k) for k in ("moment_distance", "disc_loss", "domain_accuracy")
                                     if _last(fit, k) is not None}
        rows.append(dict(method=key, tuned="plain input adapter", params=n_in, before=before, after=after))
    _report(results, summaries, names, T.param_counts(params, 2), workdir, "adapt")
    for r in rows:
        r["before"], r["after"] = 100 * r["before"], 100 * r["after"]
        r["delta"] = r["after"] - r["before"]
    results["before_after"] = rows
    shown = [dict(r, before=f"{r['before']:.1f}", after=f"{r['after']:.1f}", delta=f"{r['delta']:+.1f}") for r in rows]
    results["extra_text"] = reporting.format_table(
        shown, ["method", "tuned", "params", "before", "after", "delta"],
        title=f"templates/adapt: {src.name} -> {tgt.name}, target test accuracy (%) before/after tuning "
              f"({steps} steps each)")
    acc = results["accuracy"]
    results["paper_ordering_holds"] = bool(acc["mixture_moment_matching"] > acc["source_only"]) \
        if "mixture_moment_matching" in acc else None
    adv = [k for k in acc if k.startswith("mixture_adversarial")]
    if adv:
        results["adversarial_improves_over_source"] = bool(acc[adv[0]] > acc["source_only"])
    return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    mode = config.get("mode", None)
    if mode not in MODES:
        raise ValueError(f"Unknown templates mode {mode!r}; known: {', '.join(MODES)}.")
    if not config.tasks:
        raise ValueError("config.tasks must name at least one dataset.")
    isometric.check_config(config.model, len(config.tasks))
    if mode == "single":
        results = run_single(config, workdir)
    elif mode == "signatures":
        results = run_signatures(config, workdir)
    elif mode == "multitask":
        results = run_multitask(config, workdir)[0]
    elif mode == "transfer":
        results = run_transfer(config, workdir)
    else:
        results = run_adapt(config, workdir)
    results["mode"] = mode
    results["model"] = config.model.to_dict()
    if mode != "single" or config.model.num_templates:
        text = _table(results, mode)
    else:
        results["paper"] = PAPER["single"]
        text = reporting.format_table([dict(setting=k, ours=100 * v) for k, v in results["accuracy"].items()])
    if jax.process_index() == 0:
        print(text, flush=True)
    return results
