"""Compatible components (Gygli et al. 2020), Fig. 2 at CPU scale over seeds: how DCC, RP and IIW make the
extractor of one network work with the head of another, with the paper's controls.

  python -m experiments.run --config=configs/compat.py --workdir=/tmp/compat/cpu          # the study
  python -m experiments.run --config=configs/compat.py:smoke --workdir=/tmp/c_smoke       # seconds (tests)

Task a is `config.data.task_a` (mnist5k), task b `config.data.task_b` (digits), both 16x16x1 and the
same architecture. The study (`compat.study`) trains every variant over `config.seeds` with the two
networks' minibatches alternating, follows recombination on validation data, chooses the step count there,
trains the chosen setting (compat.dcc/rp/iiw) incrementally in both orders, and reads the test sets once:
recombination (extractor of one + head of the other, no fine-tuning, BN with test-batch statistics as in
App. C.1; stored statistics beside), own accuracy and the extractors' feature similarity. Claims are
judged from the per-seed intervals. The applications (`compat.applications`: UDA through the frozen RP
head, fast transfer from RP-only incremental pairs, a head update across architectures) run on every
seed and get claims from the same paired intervals.
"""
from __future__ import annotations

import math

import jax
import ml_collections

from modular import data, protocol
from modular.methods import compat
from modular.projection.phases import Phase, phase, train_size


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
    if "fast_transfer" in apps and not list(cc.get("fast_transfer_settings") or ()):
        raise ValueError("compat.applications 'fast_transfer' needs compat.fast_transfer_settings (e.g. RP, IIW+RP).")
    compat.study.check_target(cc)   # before any data is loaded or any network trained


def _load(config, name: str):
    d = config.data
    return data.load(name, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    _check(config)
    ds_a, ds_b = _load(config, config.data.task_a), _load(config, config.data.task_b)
    cc, seeds = config.compat, protocol.seeds(config)
    verbose = config.get("verbose", True) and jax.process_index() == 0
    log = (lambda m: print(m, flush=True)) if verbose else (lambda m: None)
    ds_a, ds_b, shared = data.align_classes(ds_a, ds_b)   # one label id = one class in both tasks
    log(f"compat: {len(shared)} classes shared by {ds_a.name} and {ds_b.name}: {', '.join(shared)}")
    study = compat.study.run(ds_a, ds_b, cc, seeds=seeds, val_fraction=float(config.data.val_fraction),
                             model_cfg=config.model, optim_cfg=config.optim, num_steps=config.num_steps,
                             batch_size=config.batch_size, log=log,
                             pretrain_source=(_load(config, cc.pretrain_data) if compat.study.uses_pretraining(cc)
                                              else None))
    per_seed = compat.study.per_seed_summary(study["per_seed"])
    estimates = {n: protocol.aggregate(runs) for n, runs in per_seed.items()}
    order, target = list(per_seed), study["target"]
    table = compat.report.study_table(estimates, order, title=(
        f"Recombination (%), a={ds_a.name} b={ds_b.name}, mean ± SE over seeds {seeds}, "
        f"{study['chosen_step']} steps per network (chosen on validation: {study['choice_reason']}); "
        f"a_to_b = extractor a + head b; stored_bn = recombination with stored BN statistics; "
        f"cka / unit_corr = linear CKA / per-unit correlation of the two extractors (x100)"))
    claims = compat.claims.study_claims(study["per_seed"], target)
    apps = {}
    if cc.get("applications"):
        uda_target = _load(config, cc.uda_target) if "uda" in cc.applications else None
        apps = compat.applications.run(study, ds_a, ds_b, cc, seeds=seeds, optim_cfg=config.optim,
                                       model_cfg=config.model, batch_size=config.batch_size,
                                       num_steps=config.num_steps, uda_target=uda_target, log=log)
        claims += compat.claims.application_claims(apps)
    plots = (compat.report.study_plots(workdir, estimates, order, study["mean_curves"], study["chosen_step"])
             if jax.process_index() == 0 else [])
    results = {k: e.mean for k, e in estimates[target].items()}
    results.update(
        setting=target, seeds=seeds, task_a=ds_a.name, task_b=ds_b.name, paper_fig2=compat.PAPER_FIG2,
        chosen_step=study["chosen_step"], choice_reason=study["choice_reason"], eval_steps=study["eval_steps"],
        settings={n: protocol.to_dicts(e) for n, e in estimates.items()}, per_seed=per_seed,
        curves=study["curves"], train_seconds=study["train_seconds"], plots=plots, claims=claims,
        readme_tables={"compat": table, "compat_claims": protocol.claims_table(claims),
                       **compat.report.applications_tables(apps)})
    if apps:
        results["applications"] = apps
    if jax.process_index() == 0:
        print(table, flush=True)
        for name, t in results["readme_tables"].items():
            if name not in ("compat", "compat_claims"):
                print(t, flush=True)
    return results


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = ("the DCC and rotation heads' extra work; incremental pairs "
             "counted at num_steps (they run the step count chosen on validation, at most that); evaluation")


def _adapted_model(model_cfg, num_classes: int):
    """A network as compatible components build one across architectures (`model_cfg.head_model` set): this
    extractor, a 1x1-conv adapter to `adapter_width` channels, head_model's head."""
    from modular import models
    from modular.models.split import SplitModel
    extractor_cfg = ml_collections.ConfigDict({k: v for k, v in model_cfg.to_dict().items()
                                               if k not in ("head_model", "adapter_width")})
    head_cfg = ml_collections.ConfigDict(model_cfg.head_model.to_dict())
    return SplitModel(extractor=compat.AdaptedExtractor(models.build_extractor(extractor_cfg),
                                                        int(model_cfg.adapter_width)),
                      head=models.build_head(head_cfg, num_classes))


def phases(config) -> list[Phase]:
    """The study's pairs as `study.variants` / `study.incremental_variants` build them (each pair: two networks
    of num_steps steps; incremental pairs run the chosen step count, at most num_steps), the pretrained-IIW
    extractor, and the applications as `applications.run` runs them on every seed."""
    study, apps = compat.study, compat.applications
    d, cc = config.data, config.compat
    model = ml_collections.ConfigDict(dict(config.model.to_dict(), split=cc.split))
    head = (("head/.*", 1.0),)   # a compat network's task head: everything after the split
    main, _ = study.variants(cc)
    pairs = len(main) + len(study.incremental_variants(cc, compat.setting_name(bool(cc.dcc), bool(cc.rp),
                                                                               bool(cc.iiw))))
    out = []
    if study.uses_pretraining(cc):  # one network on pretrain_data whose extractor starts both networks
        out.append(phase(config, f"pretrained-IIW extractor on {cc.pretrain_data}", model=model,
                         data=cc.pretrain_data, steps=int(cc.pretrain_steps)))
    out.append(phase(config, f"network pairs a, b ({pairs} pairs)", model=model, data=d.task_a, repeats=2 * pairs))
    applications = cc.get("applications") or ()
    if "fast_transfer" in applications:
        # every start (each RP-only pair's recombination and the re-initialised head) x every rate, for
        # transfer_epochs epochs over b's fit split (remainders dropped, as transfer_head does)
        fit = train_size(d.task_b, d.get("max_train"))
        fit -= math.ceil(fit * float(d.val_fraction))
        starts = len(cc.fast_transfer_settings) + 1
        out.append(phase(config, f"fast transfer ({starts} starts x {len(cc.transfer_lrs)} rates)", model=model,
                         data=d.task_b, steps=int(cc.transfer_epochs) * (fit // min(config.batch_size, fit)),
                         rules=None if cc.transfer_train == "all" else head,
                         repeats=starts * len(cc.transfer_lrs)))
    if "cross_arch" in applications:
        settings = len(dict.fromkeys(("independent", cc.cross_arch_setting)))
        steps, head_steps = apps.cross_arch_steps(cc, config.num_steps)
        # both extractors (b's at its own split) end in the adapter in front of heads of a's architecture
        adapted = [ml_collections.ConfigDict(dict(m.to_dict(), head_model=model.to_dict(),
                                                  adapter_width=int(cc.adapter_width)))
                   for m in (model, cc.cross_arch_model)]
        old = int(cc.cross_arch_old_classes)
        for tag, m in zip(("a", f"b ({cc.cross_arch_model.name})"), adapted):
            out.append(phase(config, f"cross-arch network {tag}, old classes", model=m, data=d.task_a,
                             num_classes=old, steps=steps, repeats=settings, build=_adapted_model))
            out.append(phase(config, f"cross-arch new head on frozen {tag}", model=m, data=d.task_a,
                             steps=head_steps, rules=head, repeats=settings, build=_adapted_model))
    return out
