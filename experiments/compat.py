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

On top (paper Sec. 5, `compat.applications`, on the networks of the chosen setting): `uda` adapts a's
extractor to unlabeled `compat.uda_target` images through the frozen RP head and reuses a's frozen task
head (with a control that only re-estimates the extractor's BN statistics on the target); `fast_transfer`
fine-tunes b's compatible head on a's extractor for `compat.transfer_epochs` epochs against a re-initialised
head (and against the independently trained pair's head when the sweep trained it); `cross_arch` gives b
another architecture. `compat.compare_schedules` also trains the chosen setting with the other schedule
(`results['schedules']`: joint vs incremental). The method lives in `modular.methods.compat`.
"""
from __future__ import annotations

import jax
import ml_collections

from modular import data, optim
from modular.methods import compat


def _check(config) -> None:
    cc = config.compat
    compat.check_options(cc)
    if config.num_steps < 1 or config.batch_size < 1:
        raise ValueError("num_steps and batch_size must be positive integers.")
    apps = list(cc.get("applications") or [])
    unknown = sorted(set(apps) - set(compat.APPLICATIONS))
    if unknown:
        raise ValueError(f"Unknown compat.applications {unknown}; known: {', '.join(compat.APPLICATIONS)}.")
    if "uda" in apps and not cc.rp:
        raise ValueError("compat.applications 'uda' adapts through the rotation head, so it needs compat.rp=True.")


def _load(config, name: str):
    d = config.data
    return data.load(name, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)


def _app_optim(config, lr) -> ml_collections.ConfigDict:
    return optim.override(config.optim, **({"lr": float(lr)} if lr else {}))


def _pair_kw(config, workdir: str) -> dict:
    """What every `compat.train_pair` call of this run shares."""
    return dict(options=config.compat, model_cfg=config.model, optim_cfg=config.optim, num_steps=config.num_steps,
                batch_size=config.batch_size, seed=config.seed, workdir=workdir,
                checkpoint_every=config.checkpoint_every, log_every=config.log_every,
                verbose=config.get("verbose", True))


def run_applications(config, ds_a, ds_b, pair, independent, workdir: str) -> dict:
    cc, out = config.compat, {}
    apps = list(cc.get("applications") or [])
    verbose = config.get("verbose", True)
    if "cross_arch" in apps:
        out["cross_arch"] = compat.run_cross_arch(ds_a, ds_b, setting=compat.parse_setting(pair.setting),
                                                  model_b_cfg=cc.cross_arch_model, adapter_width=cc.adapter_width,
                                                  **_pair_kw(config, workdir))
    if "uda" in apps:
        out["uda"] = compat.run_uda(pair, ds_a, _load(config, cc.uda_target),
                                    optim_cfg=_app_optim(config, cc.get("uda_lr")), num_steps=int(cc.uda_steps),
                                    batch_size=config.batch_size, seed=config.seed, workdir=workdir,
                                    log_every=config.log_every, verbose=verbose)
    if "fast_transfer" in apps:
        out["fast_transfer"] = compat.run_fast_transfer(
            pair, ds_b, independent=independent, optim_cfg=_app_optim(config, cc.get("transfer_lr")),
            epochs=int(cc.transfer_epochs), train_part=cc.transfer_train, batch_size=config.batch_size,
            seed=config.seed, workdir=workdir, verbose=verbose)
    return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    ds_a, ds_b = _load(config, config.data.task_a), _load(config, config.data.task_b)
    cc = config.compat
    chosen = (bool(cc.dcc), bool(cc.rp), bool(cc.iiw))
    main = compat.setting_name(*chosen)
    rows, per_setting, pairs = [], {}, {}
    for setting in compat.SETTINGS if cc.sweep else [chosen]:
        name = compat.setting_name(*setting)
        pairs[name], per_setting[name] = compat.train_and_evaluate(ds_a, ds_b, setting=setting, name=name,
                                                                   **_pair_kw(config, workdir))
        rows.append(compat.report.setting_row(name, per_setting[name]))
    table = compat.report.settings_table(rows, schedule=cc.schedule, task_a=ds_a.name, task_b=ds_b.name)
    matrices = {name: res["matrix_batch_stats"] for name, res in per_setting.items()}
    plots = compat.report.plots(workdir, rows, matrices) if jax.process_index() == 0 else []
    results = {k: v for k, v in per_setting[main].items() if k != "history"}
    results.update(setting=main, schedule=cc.schedule, task_a=ds_a.name, task_b=ds_b.name,
                   paper_fig2=compat.PAPER_FIG2, settings=per_setting, plots=plots, steps=config.num_steps,
                   table=[{c: r.get(c) for c in compat.report.TABLE_COLUMNS} for r in rows])
    if cc.get("compare_schedules"):
        results["schedules"] = compat.compare_schedules(ds_a, ds_b, per_setting[main], setting=chosen,
                                                        **_pair_kw(config, workdir))
    if cc.get("applications"):
        results["applications"] = run_applications(config, ds_a, ds_b, pairs[main], pairs.get("independent"),
                                                   workdir)
    if jax.process_index() == 0:
        print(table, flush=True)
        if "schedules" in results:
            print(compat.report.schedules_table(results["schedules"]), flush=True)
        if "applications" in results:
            print(compat.report.applications_table(results["applications"]), flush=True)
    return results
