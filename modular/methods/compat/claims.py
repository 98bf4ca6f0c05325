"""The paper's claims about compatibility, judged from per-seed test numbers (`protocol.claim_*`: verdicts
come from 95% t-intervals of paired per-seed differences, never by hand)."""
from __future__ import annotations

from modular import protocol

RECOMB, OWN = "recombination_accuracy", "own_accuracy"


def study_claims(per_seed: dict, target: str) -> list[dict]:
    def v(name, key=RECOMB):
        return [float(m[key]) for m in per_seed[name]]

    have = set(per_seed)
    out = []

    def greater(text, a, b, key=RECOMB, **kw):
        if a in have and b in have:
            out.append(protocol.claim_greater(text, v(a, key), v(b, key), names=(a, b), **kw))

    greater("Fig. 2: RP alone makes components compatible (RP > independent; paper 50.1 vs 10.6)", "RP",
            "independent")
    greater("Fig. 2: DCC makes components compatible (DCC > independent; paper 65.8 vs 10.6)", "DCC", "independent")
    greater("Fig. 2: IIW alone helps a little (IIW > independent; paper 25.1 vs 10.6)", "IIW", "independent")
    greater("Fig. 2: DCC is stronger than RP (paper 65.8 vs 50.1)", "DCC", "RP")
    greater("Fig. 2: RP is stronger than IIW (paper 50.1 vs 25.1)", "RP", "IIW")
    greater("Fig. 2: IIW+RP+DCC is best (> DCC; paper 76.7 vs 65.8)", "IIW+RP+DCC", "DCC")
    harder = [n for n in have if n.startswith("RP, rotation+")]
    for n in harder:
        greater(f"RP with a harder pretext ({n[4:]}) makes components compatible (> independent)", n, "independent")
    greater("A shared RP head is what makes RP work (RP > RP with each network's own RP head)", "RP",
            "RP, own RP heads")
    for n in ("IIW", "IIW+RP+DCC"):
        greater(f"Pretrained IIW: both networks starting from one pretrained extractor are more compatible than from "
                f"one random initialisation (pretrained {n} > {n})", f"pretrained {n}", n)
    if "same data: independent" in have:
        n = "same data: independent"
        out.append(protocol.claim_greater(
            "App. C.3: networks trained independently on the same data are not compatible "
            "(own accuracy exceeds recombination by more than 20 points)", v(n, OWN), v(n), names=("own", "recombined"),
            margin=0.2))
    for order in ("incremental", "incremental_ba"):
        n = f"{target}, {order}"
        if n in have and target in have:
            out.append(protocol.claim_within(
                f"Sec. 4: incremental training ({'a then b' if order == 'incremental' else 'b then a'}) is about "
                f"as compatible as joint (within 5 points)", v(n), v(target), tolerance=0.05,
                names=(order, "joint")))
    if target in have and "independent" in have:
        out.append(protocol.claim_within(
            f"Compatibility costs no task accuracy ({target} own accuracy within 2 points of independent)",
            v(target, OWN), v("independent", OWN), tolerance=0.02, names=(target, "independent")))
    return out


def application_claims(apps: dict) -> list[dict]:
    """The applications' claims from their per-seed results (`apps.run`)."""
    from modular.methods.compat.apps import fast_transfer_values
    out = []
    if "uda" in apps:
        runs = apps["uda"]["per_seed"]

        def u(key):
            return [float(r[key]) for r in runs]
        for mode, label in (("target_train_stats", "stored BN statistics"), ("target_bs", "test-batch statistics")):
            out.append(protocol.claim_greater(
                f"Sec. 5 UDA: adapting a's extractor through the frozen RP head raises target accuracy ({label})",
                u(f"after/{mode}"), u(f"before/{mode}"), names=("adapted", "unadapted")))
        out.append(protocol.claim_greater(
            "UDA through the RP head beats re-estimating BN statistics on the target alone (stored statistics)",
            u("after/target_train_stats"), u("bn_stats_only/target_train_stats"), names=("adapted", "BN stats only")))
    if "fast_transfer" in apps:
        ft = apps["fast_transfer"]
        last = int(ft["epochs"])
        for start in (s for s in ft["starts"] if s != "reinit"):
            out.append(protocol.claim_greater(
                f"Sec. 5 fast transfer: the {start} recombination (extractor a + head b) starts above a "
                f"re-initialised head (0 epochs, test-batch BN statistics)",
                fast_transfer_values(ft, start, 0, "batch_stats"), fast_transfer_values(ft, "reinit", 0, "batch_stats"),
                names=(start, "reinit")))
            if last >= 1:
                out.append(protocol.claim_greater(
                    f"Sec. 5 fast transfer: fine-tuning from the {start} recombination is ahead after 1 epoch "
                    f"(learning rates chosen on validation)", fast_transfer_values(ft, start, 1),
                    fast_transfer_values(ft, "reinit", 1), names=(start, "reinit")))
        if {"RP", "IIW+RP"} <= set(ft["starts"]):
            out.append(protocol.claim_greater(
                "Fast transfer: IIW adds to RP (IIW+RP recombination above RP at 0 epochs, test-batch statistics)",
                fast_transfer_values(ft, "IIW+RP", 0, "batch_stats"), fast_transfer_values(ft, "RP", 0, "batch_stats"),
                names=("IIW+RP", "RP")))
    if "cross_arch" in apps:
        x = apps["cross_arch"]
        comp = [n for n in x["settings"] if n != "independent"]

        def c(name, key):
            return [float(r[name][key]) for r in x["per_seed"]]
        for n in comp:
            out.append(protocol.claim_greater(
                f"Sec. 5 across architectures: a new {x.get('new_classes', 'all')}-class head trained on frozen "
                f"extractor a works on extractor b ({n}) better than on an independently trained b "
                f"(test-batch statistics)", c(n, "transferred_bs"), c("independent", "transferred_bs"),
                names=(n, "independent")))
            out.append(protocol.claim_within(
                f"Across architectures ({n}): the transferred head is within 10 points of a head trained on "
                f"extractor b itself", c(n, "transferred_bs"), c(n, "own_b_stored"), tolerance=0.1,
                names=("transferred", "own head")))
    return out
