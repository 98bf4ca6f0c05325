"""Compositional models with template mixtures (Zhmoginov, Sandler, Bashkirova), at CPU scale.

Modes (config.mode): single (one task, learned mixture), signatures (learned vs fixed sequential /
cyclic / random one-hot signatures, paper Table 5), multitask (several digit domains sharing templates
and adapters, paper Fig. 2), transfer (new task on frozen templates, paper Table 2), adapt (tune only the
target's xi by moment matching vs tuning a plain net's input adapter, paper Table 3).
"""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from modular import data as D, optim, reporting, train
from modular.methods import templates as T, templates_adapt as A
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
    ocfg = ml_collections.ConfigDict(config.optim.to_dict())
    with ocfg.unlocked():
        ocfg.lr_mults = rules if rules is not None else T.multitask_rules(
            config.mixture_lr_mult, any(s is not None for s in signatures.values()))
        ocfg.default_mult = default_mult
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
    rows = [dict(setting=k, ours=100 * v, one_hotness=results["one_hotness"].get(k),
                 signature=" ".join(map(str, results["signature"].get(k, []))))
            for k, v in results["accuracy"].items()]
    text = reporting.format_table(rows, ["setting", "ours", "one_hotness", "signature"],
                                  title=f"templates/{mode}: test accuracy (%)") + f"\npaper: {PAPER[mode]}"
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


def run_transfer(config, workdir):
    cfg = config.model
    multi, src_params, src_stats = run_multitask(config, workdir)
    sources = list(config.tasks)
    target = _load(config, config.transfer_target)
    tgt = len(sources)
    num_classes = [_load(config, n).num_classes for n in sources] + [target.num_classes]
    best_src = max(range(len(sources)), key=lambda t: multi["accuracy"][sources[t]])
    results = dict(accuracy={}, source_accuracy=multi["accuracy"], source_task=sources[best_src])
    summaries, names = {}, {}
    for i, kind in enumerate(config.transfer_inits):
        params, stats = isometric.init(cfg, jax.random.key(config.seed + 7), config.data.channels, num_classes)
        params = dict(params, shared=src_params["shared"], **{f"task{t}": src_params[f"task{t}"] for t in range(tgt)})
        stats = dict(stats, **{f"task{t}": src_stats[f"task{t}"] for t in range(tgt)})
        task = dict(params[f"task{tgt}"])
        if kind in ("source", "bn_logits"):
            task["mixture"] = src_params[f"task{best_src}"]["mixture"]
        elif kind != "random":
            raise ValueError(f"Unknown transfer init {kind!r}; known: source, random, bn_logits.")
        params[f"task{tgt}"] = task
        rules = T.transfer_rules(tgt, kind, config.mixture_lr_mult)
        params, stats, _ = _train(config, workdir, f"transfer_{kind}", cfg, {tgt: target}, {tgt: None},
                                  params=params, stats=stats, rules=rules, default_mult=0.0,
                                  num_steps=config.transfer_steps)
        for t in range(tgt):  # frozen shared parts: the source tasks must be untouched
            np.testing.assert_array_equal(params[f"task{t}"]["mixture"], src_params[f"task{t}"]["mixture"])
        results["accuracy"][kind] = T.evaluate(cfg, params, stats, target, tgt)
        summaries[i], names[i] = T.summary(params, tgt + 1, {t: None for t in range(tgt + 1)})[tgt], kind
    _report(results, summaries, names, T.param_counts(params, tgt + 1), workdir, "transfer")
    acc = results["accuracy"]
    if {"source", "random"} <= set(acc):
        results["paper_ordering_holds"] = bool(acc["source"] >= acc["random"])
    return results


def _adapt_batches(src, tgt, batch_size, seed):
    def fn(step):
        return dict(image_src=D.batch_at(src.train_images, src.train_labels, step, batch_size, seed)["image"],
                    image_tgt=D.batch_at(tgt.train_images, tgt.train_labels, step, batch_size, seed + 1)["image"])
    return fn


def _copy_task(params, stats, src: int, dst: int):
    """A new task `dst` starting as a copy of task `src` (mixture, BN patch, head and moving statistics)."""
    return dict(params, **{f"task{dst}": params[f"task{src}"]}), dict(stats, **{f"task{dst}": stats[f"task{src}"]})


def run_adapt(config, workdir):
    """Source task 0 supervised; target = config.adapt_target without labels (labels only for the bound)."""
    cfg = config.model
    if not cfg.num_templates:
        raise ValueError("Mode 'adapt' needs templates (model.num_templates > 0).")
    src, tgt = _load(config, config.tasks[0]), _load(config, config.adapt_target)
    steps, mm = config.transfer_steps, _adapt_batches(src, tgt, config.batch_size, config.seed)
    results = dict(accuracy={}, source=src.name, target=tgt.name)
    # 1. mixture model on the source; target task 1 starts as its copy
    params, stats, _ = _train(config, workdir, "adapt_source", cfg, {0: src}, {0: None}, num_classes=[src.num_classes] * 2)
    params, stats = _copy_task(params, stats, 0, 1)
    results["accuracy"]["source_only"] = T.evaluate(cfg, params, stats, tgt, 0)
    results["source_accuracy_on_source"] = T.evaluate(cfg, params, stats, src, 0)
    only_xi = [(r"task1/mixture", config.mixture_lr_mult)]
    p, s, _ = _train(config, workdir, "adapt_mixture_mm", cfg, {1: tgt}, {1: None}, params=params, stats=stats,
                     rules=only_xi, default_mult=0.0, num_steps=steps, batch_fn=mm,
                     loss_fn=A.moment_matching_loss(cfg, source_params=params, source_stats=stats,
                                                    source_task=0, target_task=1))
    results["accuracy"]["mixture_moment_matching"] = T.evaluate(cfg, p, s, tgt, 1)
    summaries = {0: T.summary(params, 2, {0: None, 1: None})[0], 1: T.summary(p, 2, {0: None, 1: None})[1]}
    p, s, _ = _train(config, workdir, "adapt_mixture_supervised", cfg, {1: tgt}, {1: None}, params=params,
                     stats=stats, rules=only_xi, default_mult=0.0, num_steps=steps)
    results["accuracy"]["mixture_supervised_upper_bound"] = T.evaluate(cfg, p, s, tgt, 1)
    summaries[2] = T.summary(p, 2, {0: None, 1: None})[1]
    # 2. baseline: a plain isometric net of equal depth, only its input adapter adapts
    plain = ml_collections.ConfigDict(dict(cfg.to_dict(), num_templates=0, bn="shared"))
    pp, ps, _ = _train(config, workdir, "adapt_plain_source", plain, {0: src}, {0: None}, rules=[])
    results["accuracy"]["plain_source_only"] = T.evaluate(plain, pp, ps, tgt, 0)
    pa, psa, _ = _train(config, workdir, "adapt_plain_input_adapter", plain, {0: tgt}, {0: None}, params=pp,
                        stats=ps, rules=[(r"shared/adapter_in/.*", 1.0)], default_mult=0.0, num_steps=steps,
                        batch_fn=mm, loss_fn=A.moment_matching_loss(plain, source_params=pp, source_stats=ps,
                                                                    source_task=0, target_task=0))
    results["accuracy"]["plain_input_adapter_moment_matching"] = T.evaluate(plain, pa, psa, tgt, 0)
    _report(results, summaries, {0: "source", 1: "target (moment matching)", 2: "target (supervised)"},
            T.param_counts(params, 2), workdir, "adapt")
    acc = results["accuracy"]
    results["paper_ordering_holds"] = bool(acc["mixture_moment_matching"] > acc["source_only"])
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
