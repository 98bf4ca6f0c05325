"""Compatible components (Gygli et al. 2020), Fig. 2 at CPU scale: how DCC, RP and IIW make the extractor
of one network work with the head of another.

  python -m experiments.run --config=configs/compat.py --workdir=/tmp/compat              # 8-way sweep, ~10 min
  python -m experiments.run --config=configs/compat.py --workdir=/tmp/c1 --config.compat.sweep=False \
      --config.compat.dcc=True --config.compat.rp=False --config.compat.iiw=False         # one setting
  python -m experiments.run --config=configs/compat.py:smoke --workdir=/tmp/c_smoke       # seconds (tests)

Task a is `config.data.task_a` (mnist5k), task b `config.data.task_b` (digits), both 16x16x1 and the
same architecture. Recombination (extractor of one + head of the other, no fine-tuning) is measured on
the extractor's task test set over the common classes, BatchNorm with test-batch statistics (paper
App. C.1) and, for comparison, with the stored training statistics.
"""
from __future__ import annotations

import itertools
import os

import jax
import ml_collections
import numpy as np

from modular import data, optim, reporting, train
from modular.methods import compat as C

# Fig. 2 of the paper (recombination accuracy, %); settings the paper does not report are None.
PAPER_FIG2 = {"independent": 10.6, "DCC": 65.8, "RP": 50.1, "IIW": 25.1, "RP+DCC": None, "IIW+DCC": None,
              "IIW+RP": None, "IIW+RP+DCC": 76.7}


def setting_name(dcc: bool, rp: bool, iiw: bool) -> str:
    parts = [n for n, on in (("IIW", iiw), ("RP", rp), ("DCC", dcc)) if on]
    return "+".join(parts) or "independent"


def _check(config) -> None:
    cc = config.compat
    if cc.schedule not in C.SCHEDULES:
        raise ValueError(f"Unknown compat.schedule {cc.schedule!r}; known: {', '.join(C.SCHEDULES)}.")
    if config.num_steps < 1 or config.batch_size < 1:
        raise ValueError("num_steps and batch_size must be positive integers.")


def load_tasks(config):
    d = config.data
    kw = dict(image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)
    return data.load(d.task_a, **kw), data.load(d.task_b, **kw)


def _model_cfg(config) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(config.model.to_dict())
    cfg.split = config.compat.split
    return cfg


def _optim_cfg(config, frozen: list[str]) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(config.optim.to_dict())
    cfg.lr_mults = [(f"{name}/.*", 0.0) for name in frozen] + [tuple(r) for r in cfg.lr_mults]
    return cfg


def train_pair(config, ds_a, ds_b, *, dcc: bool, rp: bool, iiw: bool, workdir: str | None, name: str):
    """Train networks a and b with the chosen auxiliaries and schedule; returns (modules, params, stats, info)."""
    common = C.resolve_common_classes(config.compat.get("common_classes"), ds_a.num_classes, ds_b.num_classes)
    mods = C.build_modules(_model_cfg(config), ds_a.num_classes, ds_b.num_classes, len(common))
    params, stats = C.init_variables(mods, jax.random.key(config.seed), ds_a.image_shape, identical_init=iiw)
    cc = ml_collections.ConfigDict(dict(config.compat.to_dict(), dcc=dcc, rp=rp))
    label_map = C.common_label_map(common, max(ds_a.num_classes, ds_b.num_classes))
    sets = {"a": ds_a, "b": ds_b}
    unused = [n for n, on in (("dcc", dcc), ("rp", rp)) if not on]

    def batch_fn(tasks):
        def fn(step):
            out = {}
            for i, t in enumerate(tasks):
                b = data.batch_at(sets[t].train_images, sets[t].train_labels, step, config.batch_size,
                                  config.seed + 1 + i)
                out[f"image_{t}"], out[f"label_{t}"] = b["image"], b["label"]
            return out
        return fn

    if config.compat.schedule == "joint":  # every step: one minibatch of a and one of b
        phases = [(("a", "b"), unused)]
    else:  # a alone, then b against a's frozen auxiliary heads
        phases = [(("a",), unused + ["b"]), (("b",), unused + ["a", "dcc", "rp"])]
    history, seconds = [], 0.0
    for tasks, frozen in phases:
        ocfg = _optim_cfg(config, sorted(set(frozen)))
        tx = optim.build(ocfg, params, config.num_steps)
        state = train.TrainState.create(params, stats, tx)
        phase = f"{name}/{'+'.join(tasks)}"
        fit = train.fit(state=state, loss_fn=C.make_loss_fn(mods, cc, label_map, tasks), tx=tx,
                        batch_fn=batch_fn(tasks), num_steps=config.num_steps, seed=config.seed,
                        trainable=optim.trainable_mask(params, ocfg),
                        workdir=os.path.join(workdir, phase) if workdir else None,
                        checkpoint_every=config.checkpoint_every, log_every=config.log_every, name=phase,
                        verbose=config.get("verbose", True))
        params, stats = jax.device_get(fit.state.params), jax.device_get(fit.state.model_state)
        history += [dict(h, phase=phase) for h in fit.history]
        seconds += fit.seconds
    return mods, params, stats, dict(common=common, history=history, train_seconds=seconds)


def evaluate(mods, params, stats, ds_a, ds_b, common) -> dict:
    """Own and recombined accuracies, both BatchNorm modes, on each extractor's task test set."""
    sets = {"a": ds_a, "b": ds_b}
    out = {}
    for mode, tag in (("batch_stats", "bs"), ("eval", "train_stats")):
        for ext, head in itertools.product("ab", "ab"):
            ds = sets[ext]
            out[f"{tag}/{ext}{head}"] = C.recombination_accuracy(mods, params, stats, ext, head, ds.test_images,
                                                                 ds.test_labels, common, mode=mode)
    res = dict(
        recombination_accuracy=(out["bs/ab"] + out["bs/ba"]) / 2,
        recombination_a_ext_b_head=out["bs/ab"], recombination_b_ext_a_head=out["bs/ba"],
        recombination_accuracy_train_stats=(out["train_stats/ab"] + out["train_stats/ba"]) / 2,
        recombination_a_ext_b_head_train_stats=out["train_stats/ab"],
        recombination_b_ext_a_head_train_stats=out["train_stats/ba"],
        own_accuracy=(out["train_stats/aa"] + out["train_stats/bb"]) / 2,
        own_accuracy_a=out["train_stats/aa"], own_accuracy_b=out["train_stats/bb"],
        own_accuracy_batch_stats=(out["bs/aa"] + out["bs/bb"]) / 2,
        chance=1.0 / len(common),
        matrix_batch_stats=[[out["bs/aa"], out["bs/ab"]], [out["bs/ba"], out["bs/bb"]]],
        matrix_train_stats=[[out["train_stats/aa"], out["train_stats/ab"]],
                            [out["train_stats/ba"], out["train_stats/bb"]]],
    )
    return res


def _plots(workdir: str, rows: list[dict], matrices: dict, names: tuple[str, str]) -> list[str]:
    paths = []
    fig, ax = reporting.new_figure(figsize=(8, 3.6))
    xs = np.arange(len(rows))
    ours = [100 * r["recombination_accuracy"] for r in rows]
    paper = [r["paper"] if r["paper"] is not None else 0.0 for r in rows]
    ax.bar(xs - 0.2, paper, 0.4, label="paper (Fig. 2)", color="#bbbbbb")
    ax.bar(xs + 0.2, ours, 0.4, label="ours", color="#3366aa")
    ax.axhline(100 * rows[0]["chance"], color="k", ls="--", lw=0.8, label="chance")
    ax.set_xticks(xs, [r["setting"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("recombination accuracy (%)")
    ax.legend(fontsize=8)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_bars.png")))

    n = len(matrices)
    cols = min(4, n)
    fig, axes = reporting.new_figure(-(-n // cols), cols, figsize=(2.6 * cols, 2.5 * -(-n // cols)), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (setting, m) in zip(axes.flat, matrices.items()):
        ax.imshow(100 * np.asarray(m), vmin=0, vmax=100, cmap="viridis")
        for i, j in itertools.product(range(2), range(2)):
            ax.text(j, i, f"{100 * m[i][j]:.0f}", ha="center", va="center", color="w" if m[i][j] < 0.6 else "k")
        ax.set_xticks([0, 1], [f"head {names[0]}", f"head {names[1]}"], fontsize=7)
        ax.set_yticks([0, 1], [f"ext {names[0]}", f"ext {names[1]}"], fontsize=7)
        ax.set_title(setting, fontsize=8)
    paths.append(reporting.save_figure(fig, reporting.figure_path(workdir, "recombination_matrix.png")))
    return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    ds_a, ds_b = load_tasks(config)
    cc = config.compat
    chosen = (bool(cc.dcc), bool(cc.rp), bool(cc.iiw))
    settings = [(d, r, i) for i, r, d in itertools.product((False, True), repeat=3)] if cc.sweep else [chosen]
    settings.sort(key=lambda s: (sum(s), s[2], s[1]))  # independent, single ones, pairs, all three
    rows, matrices, per_setting = [], {}, {}
    for dcc, rp, iiw in settings:
        name = setting_name(dcc, rp, iiw)
        mods, params, stats, info = train_pair(config, ds_a, ds_b, dcc=dcc, rp=rp, iiw=iiw, workdir=workdir,
                                               name=name)
        res = evaluate(mods, params, stats, ds_a, ds_b, info["common"])
        res.update(train_seconds=info["train_seconds"], history=info["history"])
        per_setting[name] = res
        matrices[name] = res["matrix_batch_stats"]
        rows.append(dict(setting=name, paper=PAPER_FIG2.get(name), recombination_accuracy=res["recombination_accuracy"],
                         chance=res["chance"], ours=100 * res["recombination_accuracy"],
                         a_to_b=100 * res["recombination_a_ext_b_head"], b_to_a=100 * res["recombination_b_ext_a_head"],
                         train_stats=100 * res["recombination_accuracy_train_stats"],
                         own=100 * res["own_accuracy"]))
    columns = ["setting", "paper", "ours", "a_to_b", "b_to_a", "train_stats", "own"]
    table = reporting.format_table(rows, columns, title=(
        f"Recombination accuracy (%), {cc.schedule} training, a={ds_a.name} b={ds_b.name}, BN batch statistics; "
        f"a_to_b = extractor a + head b on a's test set; train_stats = same with stored BN statistics; "
        f"own = own-task accuracy; chance {100 * rows[0]['chance']:.1f}%"))
    plots = _plots(workdir, rows, matrices, ("a", "b")) if jax.process_index() == 0 else []
    main = per_setting[setting_name(*chosen)] if setting_name(*chosen) in per_setting else per_setting[rows[-1]["setting"]]
    results = {k: v for k, v in main.items() if k != "history"}
    results.update(setting=setting_name(*chosen), schedule=cc.schedule, task_a=ds_a.name, task_b=ds_b.name,
                   paper_fig2=PAPER_FIG2, table=[{c: r.get(c) for c in columns} for r in rows],
                   settings=per_setting, plots=plots, steps=config.num_steps)
    if jax.process_index() == 0:
        print(table, flush=True)
    return results
