"""Studies on top of the Fig. 2 sweep: joint vs incremental training of one setting, and heads shared by
extractors of different architectures; with the paper claims that `uda` and `transfer` test.
"""
from __future__ import annotations

import ml_collections

from modular.methods.compat import transfer, uda
from modular.methods.compat.recombine import summary, train_and_evaluate
from modular.methods.compat.schedule import SCHEDULES, setting_name

APPLICATIONS = ("uda", "fast_transfer", "cross_arch")
PAPER_APPLICATIONS = {
    "uda": uda.PAPER_CLAIM,
    "fast_transfer": transfer.PAPER_CLAIM,
    "cross_arch": "(our paraphrase of the brief, not a number from the paper) extractors of different "
                  "architectures, adapted by 1x1 convs to a common width, can share compatible heads: "
                  "with the compatibility losses recombination is far above independent training.",
}
PAPER_SCHEDULES = ("Sec. 4: incremental training (b against a's frozen auxiliary heads) reaches recombination "
                   "accuracy close to joint training.")


def compare_schedules(ds_a, ds_b, metrics: dict, *, setting: tuple[bool, bool, bool],
                      options: ml_collections.ConfigDict, **pair_kw) -> dict:
    """`setting` trained with the schedule other than `options.schedule` too (whose `metrics` are given):
    {schedule: summary metrics, 'setting': name, 'paper': claim}. `pair_kw` go to `train_pair`."""
    other = next(s for s in SCHEDULES if s != options.schedule)
    name = setting_name(*setting)
    _, res = train_and_evaluate(ds_a, ds_b, setting=setting, name=f"{name}@{other}",
                                options=ml_collections.ConfigDict(dict(options.to_dict(), schedule=other)), **pair_kw)
    return {options.schedule: summary(metrics), other: summary(res), "setting": name, "paper": PAPER_SCHEDULES}


def run_cross_arch(ds_a, ds_b, *, setting: tuple[bool, bool, bool], model_cfg: ml_collections.ConfigDict,
                   model_b_cfg: ml_collections.ConfigDict, adapter_width: int, **pair_kw) -> dict:
    """Network b gets the architecture `model_b_cfg`; both extractors end in a 1x1-conv adapter to
    `adapter_width` channels and feed the same head architecture. Independent training vs `setting` (IIW =
    identical initial heads), recombination as in Fig. 2. `pair_kw` go to `train_pair`."""
    out = {}
    for s in dict.fromkeys(((False, False, False), tuple(setting))):
        name = setting_name(*s)
        _, res = train_and_evaluate(ds_a, ds_b, setting=s, name=f"cross_arch/{name}", model_cfg=model_cfg,
                                    model_b_cfg=model_b_cfg, adapter_width=int(adapter_width), **pair_kw)
        out[name] = summary(res)
    ind, comp = out["independent"], out[setting_name(*setting)]
    agrees = comp["recombination_accuracy"] > ind["recombination_accuracy"] + 0.1
    a, b = model_cfg, model_b_cfg
    note = (f"a = {a.name}-{a.depth} (width {a.width}), b = {b.name}-{b.depth} (width {b.width}, widen "
            f"{b.get('widen', 1)}), adapters to {adapter_width} channels: recombination "
            f"{100 * ind['recombination_accuracy']:.1f}% independent vs {100 * comp['recombination_accuracy']:.1f}% "
            f"{setting_name(*setting)} (chance {100 * res['chance']:.0f}%); "
            + ("compatibility carries across architectures." if agrees else
               "the compatibility losses do NOT lift recombination by 10 points across architectures here."))
    return dict(model_a=a.to_dict(), model_b=b.to_dict(), adapter_width=int(adapter_width), settings=out,
                paper_claim=PAPER_APPLICATIONS["cross_arch"], agrees_with_paper=agrees, note=note)
