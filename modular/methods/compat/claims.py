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
