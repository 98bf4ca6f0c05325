"""The comparison protocol: validation never sees test data, grids are shared, claims follow intervals."""
import json
import math

import ml_collections
import numpy as np
import pytest

from experiments import readme
from modular import protocol, reporting
from modular.data.dataset import Dataset


def _dataset(n=100, n_test=40, classes=4):
    rng = np.random.default_rng(0)
    return Dataset("toy", rng.random((n, 4, 4, 1), np.float32), np.arange(n, dtype=np.int32) % classes,
                   rng.random((n_test, 4, 4, 1), np.float32), np.arange(n_test, dtype=np.int32) % classes, classes)


def test_seeds_count_and_list():
    c = ml_collections.ConfigDict(dict(seed=5, seeds=3))
    assert protocol.seeds(c) == [5, 6, 7]
    assert protocol.seeds(ml_collections.ConfigDict(dict(seed=5, seeds=[1, 9]))) == [1, 9]
    for bad in (0, [1, 1], "three"):
        c2 = ml_collections.ConfigDict(dict(seed=0, seeds=bad))
        with pytest.raises(ValueError, match="config.seeds"):
            protocol.seeds(c2)


def test_validation_split_is_carved_from_training_data_only():
    ds = _dataset()
    fit, val = protocol.validation_split(ds, 0.2, seed=0)
    assert len(fit.train_labels) + len(val.test_labels) == len(ds.train_labels)
    # validation examples are training examples the fit part lacks; the real test set is in neither
    fit_rows = {x.tobytes() for x in fit.train_images}
    val_rows = {x.tobytes() for x in val.test_images}
    assert not fit_rows & val_rows
    assert val_rows <= {x.tobytes() for x in ds.train_images}
    assert not val_rows & {x.tobytes() for x in ds.test_images}
    assert np.bincount(val.test_labels).tolist() == [len(val.test_labels) // 4] * 4   # stratified
    again = protocol.validation_split(ds, 0.2, seed=0)[1]
    assert np.array_equal(again.test_labels, val.test_labels) and np.array_equal(again.test_images, val.test_images)


def test_grid_select_and_ties_to_the_earliest():
    g = protocol.grid(lr=[0.1, 0.01], steps=[100, 200])
    assert g == [dict(lr=0.1, steps=100), dict(lr=0.1, steps=200), dict(lr=0.01, steps=100),
                 dict(lr=0.01, steps=200)]
    assert protocol.budget(ml_collections.ConfigDict(dict(lrs=[1, 2], steps=5))) == [dict(lr=1.0, steps=5),
                                                                                     dict(lr=2.0, steps=5)]
    best, score = protocol.select(g, [0.5, 0.9, 0.9, float("nan")])
    assert best == dict(lr=0.1, steps=200) and score == 0.9
    with pytest.raises(ValueError, match="non-empty list"):
        protocol.grid(lr=[])
    with pytest.raises(ValueError, match="non-finite"):
        protocol.select(g[:1], [float("nan")])


def test_estimate_and_aggregate():
    e = protocol.estimate([0.8, 0.9, 1.0])
    assert e.mean == pytest.approx(0.9) and e.se == pytest.approx(0.1 / math.sqrt(3))
    lo, hi = e.interval()
    assert lo < 0.9 < hi and hi - lo == pytest.approx(2 * 4.3027 * e.se, rel=1e-3)   # t(0.975, 2) = 4.303
    assert format(protocol.estimate([1.0]), ".1f") == "1.0"
    agg = protocol.aggregate([dict(a=1.0, b=dict(x=2.0)), dict(a=3.0, b=dict(x=4.0), c=None)])
    assert agg["a"].mean == 2.0 and agg["b"]["x"].n == 2 and "c" not in agg
    js = protocol.to_dicts(agg, scale=100)
    json.dumps(js)
    assert js["a"]["mean"] == 200.0 and js["b"]["x"]["values"] == [200.0, 400.0]


def test_claim_verdicts_follow_the_interval():
    clear = protocol.claim_greater("a beats b", [0.9, 0.91, 0.92], [0.5, 0.52, 0.49])
    assert clear["verdict"] == protocol.HOLDS and "a 91.0 vs b 50.3" in clear["evidence"]
    reverse = protocol.claim_greater("b beats a", [0.5, 0.52, 0.49], [0.9, 0.91, 0.92])
    assert reverse["verdict"] == protocol.FAILS
    noisy = protocol.claim_greater("a beats b", [0.9, 0.5, 0.7], [0.6, 0.8, 0.65])
    assert noisy["verdict"] == protocol.INCONCLUSIVE
    one_seed = protocol.claim_greater("a beats b", [0.99], [0.1])
    assert one_seed["verdict"] == protocol.INCONCLUSIVE   # no interval from one seed
    within = protocol.claim_within("a within 2 pts of b", [0.90, 0.91, 0.905], [0.91, 0.915, 0.91],
                                   tolerance=0.02)
    assert within["verdict"] == protocol.HOLDS
    assert protocol.claim_above("r < 0", [0.8, 0.7, 0.75], 0.0)["verdict"] == protocol.HOLDS
    with pytest.raises(ValueError, match="paired"):
        protocol.claim_greater("x", [1.0], [1.0, 2.0])
    assert "a beats b" in protocol.claims_table([clear])


def test_readme_sections_are_replaced_from_results(tmp_path):
    md = tmp_path / "README.md"
    md.write_text("intro\n<!-- results:h2t -->\nold 1.0\n<!-- /results:h2t -->\nafter\n")
    run = tmp_path / "run"
    run.mkdir()
    reporting.write_json(str(run / "results.json"), dict(readme_tables={"h2t": "| m | 96.1 ± 0.3 |"}))
    assert readme.main([str(run), "--readme", str(md), "--check"]) == 1
    assert readme.main([str(run), "--readme", str(md)]) == 0
    assert md.read_text() == "intro\n<!-- results:h2t -->\n| m | 96.1 ± 0.3 |\n<!-- /results:h2t -->\nafter\n"
    assert readme.main([str(run), "--readme", str(md), "--check"]) == 0
    md.write_text("no markers\n")
    with pytest.raises(SystemExit, match="results:h2t"):
        readme.main([str(run), "--readme", str(md)])


def test_verdict_kinds_on_constructed_data():
    # Deterministic: the same value in every seed is a fact, read off the value, with no interval claimed.
    fact = protocol.claim_greater("a stores less than b", [0.9, 0.9, 0.9], [0.1, 0.1, 0.1])
    assert fact["kind"] == protocol.DETERMINISTIC and fact["verdict"] == protocol.HOLDS
    assert "the same in every seed" in fact["evidence"]
    assert "holds (deterministic)" in protocol.claims_table([fact])
    noisy = protocol.claim_greater("a beats b", [0.90, 0.91, 0.92], [0.80, 0.80, 0.81])
    assert noisy["kind"] == protocol.INTERVAL and noisy["verdict"] == protocol.HOLDS
    # Effect size: the paper's +39.5 points; a null result (interval around 0) is refuted, not inconclusive.
    null = protocol.claim_effect("RP beats independent", [0.104, 0.10, 0.11], [0.10, 0.11, 0.105], paper_effect=0.395)
    assert null["verdict"] == protocol.REFUTED and null["kind"] == protocol.EFFECT_SIZE
    assert protocol.claim_greater("RP beats independent", [0.104, 0.10, 0.11], [0.10, 0.11, 0.105])["verdict"] == \
        protocol.INCONCLUSIVE
    half = protocol.claim_effect("x", [0.50, 0.52, 0.51], [0.20, 0.20, 0.21], paper_effect=0.395)
    assert half["verdict"] == protocol.HOLDS and half["paper_effect"] == pytest.approx(39.5)
    unsure = protocol.claim_effect("x", [0.30, 0.45, 0.20], [0.10, 0.10, 0.10], paper_effect=0.395)
    assert unsure["verdict"] == protocol.INCONCLUSIVE
    with pytest.raises(ValueError, match="positive gain"):
        protocol.claim_effect("x", [0.1], [0.1], paper_effect=0.0)
    # Not testable: the reason and what a test would need.
    untestable = protocol.claim_not_testable("Head2Toe is 100x cheaper than fine-tuning",
                                             "the ceiling here is t*B/N = 6.4x", "fine-tuning budgets of 640 epochs")
    assert untestable["verdict"] == protocol.NOT_TESTABLE and "6.4x" in untestable["evidence"]
    assert "not testable at this scale" in protocol.claims_table([untestable])


def test_grid_edges_flag_choices_on_either_end_and_only_those():
    axes = dict(lr=[0.001, 0.01, 0.1], steps=[100], opt=["adam", "sgd"])
    chosen = [dict(lr=0.1, steps=100, opt="sgd"), dict(lr=0.01, steps=100, opt="adam"),
              dict(lr=0.1, steps=100, opt="adam")]
    edges = protocol.grid_edges(axes, chosen, seeds=[0, 1, 2])
    # only lr is an ordered, searched axis: one value of steps was not searched, opt has no order
    assert edges == [dict(axis="lr", value=0.1, edge="highest", seeds=[0, 2], tied=[], of=3,
                          grid=[0.001, 0.01, 0.1])]
    assert protocol.edge_text(edges) == "lr 0.1 (highest of 0.001..0.1, in 2 of 3 choices)"
    assert protocol.grid_edges(axes, [dict(lr=0.01, steps=100)] * 3) == []
    low = protocol.grid_edges(dict(lr=[0.3, 0.03, 0.003]), [dict(lr=0.003)])   # order of the grid does not matter
    assert [(e["edge"], e["value"]) for e in low] == [("lowest", 0.003)]
    both = protocol.grid_edges(dict(lr=[1e-3, 1e-2]), [dict(lr=1e-3), dict(lr=1e-2)])
    assert [e["edge"] for e in both] == ["lowest", "highest"]   # two values: no interior
    note = protocol.edges_note({"S/B + last": edges, "full": []})
    assert note.startswith("Grid-edge choices (1 of 2 rows)") and "S/B + last: lr 0.1 (highest" in note
    assert protocol.edges_note({"full": []}) == ""
    with pytest.raises(ValueError, match="2 chosen settings but 3 seeds"):
        protocol.grid_edges(axes, chosen[:2], seeds=[0, 1, 2])


def test_grid_edges_tell_a_tie_with_an_interior_point_and_an_axis_bound_from_an_edge():
    axes = dict(lr=[0.01, 0.1, 1.0], fraction=[0.2, 0.5, 1.0])
    points = [dict(lr=lr, fraction=f) for lr in axes["lr"] for f in axes["fraction"]]

    def scored(best, value, rest=0.5):
        return [(p, value if p == best else rest) for p in points]

    top = dict(lr=1.0, fraction=0.5)
    chosen = [top, top, top]
    scores = [scored(top, 0.9),                                            # a real edge: better than any inside
              [(p, 0.9 if p in (top, dict(lr=0.1, fraction=0.2)) else 0.5) for p in points],   # tied inside
              None]                                                        # no scores: counted as an edge
    edges = protocol.grid_edges(axes, chosen, seeds=["a", "b", "c"], scores=scores)
    assert edges == [dict(axis="lr", value=1.0, edge="highest", seeds=["a", "c"], tied=["b"], of=3,
                          grid=[0.01, 0.1, 1.0])]
    assert protocol.edge_text(edges) == ("lr 1 (highest of 0.01..1, in 2 of 3 choices; 1 more tied with an "
                                         "interior value)")
    # a tie with a point at the other edge is no tie: that point is not inside the grid either
    low_tie = [(p, 0.9 if p in (top, dict(lr=0.01, fraction=0.5)) else 0.5) for p in points]
    assert protocol.grid_edges(axes, [top], scores=[low_tie])[0]["seeds"] == [0]
    # only ties: listed in results.json, but the row is no lower bound and the note stays empty
    only_tied = protocol.grid_edges(axes, [top], scores=[scores[1]])
    assert only_tied[0]["seeds"] == [] and protocol.edge_text(only_tied) == ""
    assert protocol.edges_note({"head2toe": only_tied}) == ""
    # an axis's own limit (keep every feature) is no edge; the lowest fraction still is
    full = protocol.grid_edges(axes, [dict(lr=0.1, fraction=1.0), dict(lr=0.1, fraction=0.2)],
                               bounds=dict(fraction=[1.0]))
    assert [(e["axis"], e["value"], e["seeds"]) for e in full] == [("fraction", 0.2, [1])]
    with pytest.raises(ValueError, match="not among its scored points"):
        protocol.grid_edges(axes, [dict(lr=1.0, fraction=0.2)], scores=[[(dict(lr=0.1, fraction=0.2), 0.5)]])
    with pytest.raises(ValueError, match="1 chosen settings but 2 lists of scores"):
        protocol.grid_edges(axes, [top], scores=[None, None])
