"""Parameter-tree algebra: rules, split/merge, swap with clear errors, counts, hashes, tables."""
import numpy as np
import pytest

from modular import params as P


def tree(seed=0, head_width=3):
    rng = np.random.default_rng(seed)
    return {
        "extractor": {"conv": {"kernel": rng.normal(size=(3, 3, 1, 4)).astype(np.float32)},
                      "bn": {"scale": np.ones(4, np.float32), "bias": np.zeros(4, np.float32)}},
        "head": {"classifier": {"kernel": rng.normal(size=(4, head_width)).astype(np.float32),
                                "bias": np.zeros(head_width, np.float32)}},
    }


def test_paths_are_slash_joined_and_roundtrip():
    t = tree()
    assert P.paths(t) == ["extractor/conv/kernel", "extractor/bn/scale", "extractor/bn/bias",
                          "head/classifier/kernel", "head/classifier/bias"]
    back = P.unflatten(P.flatten(t))
    assert P.paths(back) == P.paths(t)


def test_rules_are_ordered_first_match_wins_with_default():
    t = tree()
    labels = P.flatten(P.label_tree(t, [("head/.*", P.PRIVATE), (".*/bn/.*", "bn"), (".*", P.SHAREABLE)]))
    assert labels["head/classifier/kernel"] == P.PRIVATE
    assert labels["extractor/bn/scale"] == "bn"
    assert labels["extractor/conv/kernel"] == P.SHAREABLE
    assert P.flatten(P.label_tree(t, [], default="x"))["head/classifier/bias"] == "x"


def test_bad_regex_is_one_sentence():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        P.label_tree(tree(), [("head/(", True)])


def test_split_then_merge_is_identity():
    t = tree()
    parts = P.split(t, [("head/.*", P.PRIVATE)], default=P.SHAREABLE)
    assert set(parts) == {P.PRIVATE, P.SHAREABLE}
    assert P.paths(parts[P.PRIVATE]) == ["head/classifier/kernel", "head/classifier/bias"]
    merged = P.merge(parts[P.SHAREABLE], parts[P.PRIVATE])
    for p, v in P.flatten(t).items():
        np.testing.assert_array_equal(P.flatten(merged)[p], v)
    with pytest.raises(ValueError, match="more than one subtree"):
        P.merge(parts[P.SHAREABLE], parts[P.SHAREABLE])


def test_swap_moves_exactly_the_subtree():
    a, b = tree(0), tree(1)
    ab = P.swap(a, b, "head")
    np.testing.assert_array_equal(ab["head"]["classifier"]["kernel"], b["head"]["classifier"]["kernel"])
    np.testing.assert_array_equal(ab["extractor"]["conv"]["kernel"], a["extractor"]["conv"]["kernel"])
    assert a["head"]["classifier"]["kernel"] is not b["head"]["classifier"]["kernel"]  # inputs untouched


def test_swap_errors_name_the_path():
    a = tree(0)
    with pytest.raises(P.SubtreeMismatchError, match="head/classifier/kernel.*float32\\[4, 3\\].*float32\\[4, 5\\]"):
        P.swap(a, tree(1, head_width=5), "head")
    wrong_dtype = tree(1)
    wrong_dtype["head"]["classifier"]["bias"] = wrong_dtype["head"]["classifier"]["bias"].astype(np.float16)
    with pytest.raises(P.SubtreeMismatchError, match="head/classifier/bias.*float16"):
        P.swap(a, wrong_dtype, "head")
    missing = tree(1)
    del missing["head"]["classifier"]["bias"]
    with pytest.raises(P.SubtreeMismatchError, match="missing 'head/classifier/bias'"):
        P.swap(a, missing, "head")
    with pytest.raises(KeyError, match="No subtree at 'tail'"):
        P.get_subtree(a, "tail")


def test_counts_bytes_and_roles():
    t = tree()
    assert P.count(t) == 36 + 4 + 4 + 12 + 3
    assert P.nbytes(t) == 4 * P.count(t)
    by_role = P.split(t, [("head/.*", P.PRIVATE)], P.SHAREABLE)
    assert P.count(by_role[P.PRIVATE]) == 15 and P.count(by_role[P.SHAREABLE]) == 44


def test_structure_hash_ignores_values_not_shapes():
    assert P.structure_hash(tree(0)) == P.structure_hash(tree(1))
    assert P.structure_hash(tree(0)) != P.structure_hash(tree(0, head_width=4))


def test_table_prints_labels_and_totals():
    t = tree()
    text = P.table(t, P.label_tree(t, [("head/.*", "train")], "frozen"), title="demo")
    assert "head/classifier/kernel" in text and "4x3" in text
    assert "totals: frozen 44 (74.6%), train 15 (25.4%)" in text


def test_load_matching_takes_shared_paths_and_keeps_dont_load():
    src, dst = tree(0), tree(1)
    out = P.load_matching(dst, src, dont_load=["head/.*"])
    np.testing.assert_array_equal(out["extractor"]["conv"]["kernel"], src["extractor"]["conv"]["kernel"])
    np.testing.assert_array_equal(out["head"]["classifier"]["kernel"], dst["head"]["classifier"]["kernel"])
    report = P.matching_report(dst, src, "head/.*")
    assert len(report["loaded"]) == 3 and len(report["skipped"]) == 2 and not report["kept"] + report["unused"]
    # A source lacking a path keeps the model's value, unless every path is required.
    partial = {"extractor": src["extractor"]}
    assert P.matching_report(dst, partial)["kept"] == ["head/classifier/kernel", "head/classifier/bias"]
    with pytest.raises(P.SubtreeMismatchError, match="2 parameter.*not found.*head/classifier/kernel"):
        P.load_matching(dst, partial, require_all=True)
    # A leaf of another shape is one sentence naming it; dont_load lets the model keep its own.
    wide = tree(0, head_width=4)
    with pytest.raises(P.SubtreeMismatchError, match="Cannot load 'head/classifier/kernel'.*float32\\[4, 3\\]"):
        P.load_matching(dst, wide)
    assert P.load_matching(dst, wide, dont_load="head/.*")["head"]["classifier"]["kernel"].shape == (4, 3)
