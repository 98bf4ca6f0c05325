"""Template mixtures' self-organisation: the clustering regulariser's pull towards one-hot, the
progressiveness measure, cross-task agreement, the multi-seed claims, and source selection on validation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import data, protocol, train
from modular.methods import templates as T
from modular.methods.templates import multitask as M, study, transfer as X
from modular.methods.templates.signatures import progressiveness, runs, signature_stats
from modular.models import isometric


def test_clustering_regulariser_pushes_a_near_uniform_mixture_to_one_hot():
    """Descending the clustering penalty alone from near-uniform logits ends near one-hot (its xi-gradient is not
    zero there), while the entropy penalty's gradient at an exactly uniform mixture is zero."""
    k, depth = 3, 6
    bank = {"w": jax.random.normal(jax.random.key(0), (k, 20, 30)), "b": jax.random.normal(jax.random.key(1), (k, 7))}
    logits = 0.01 * jax.random.normal(jax.random.key(2), (depth, k))
    loss = jax.jit(jax.value_and_grad(lambda l: T.clustering(jax.nn.softmax(l), bank)))
    start = isometric.one_hotness(jax.nn.softmax(logits))
    assert start < 0.35
    _, g0 = loss(logits)
    assert float(jnp.abs(g0).max()) > 1e-3
    for _ in range(300):
        _, g = loss(logits)
        logits = logits - 1.0 * g
    assert isometric.one_hotness(jax.nn.softmax(logits)) > 0.9
    g_entropy = jax.grad(lambda l: T.entropy(jax.nn.softmax(l)))(jnp.zeros((depth, k)))
    assert float(jnp.abs(g_entropy).max()) < 1e-6


@pytest.mark.parametrize("sig, expected_runs, expected", [
    ([0, 1, 1, 2, 2, 2], [1, 2, 3], 1.0),          # every later run longer: progressive
    ([0, 0, 0, 1, 1, 2], [3, 2, 1], -1.0),         # every later run shorter
    ([0, 1, 2, 0, 1, 2], [1] * 6, 0.0),            # cyclic: equal runs, no trend
    ([2, 2, 2, 2], [4], 0.0),                      # one run
    ([0, 2, 2, 2, 1, 2], [1, 3, 1, 1], -1 / 6),    # +1 (1<3), -2 (3>1, 3>1), ties 0 over 6 pairs
    ([1, 0, 0, 1, 1, 1], [1, 2, 3], 1.0),          # a template may come back: runs, not templates, count
])
def test_progressiveness_of_hand_made_signatures(sig, expected_runs, expected):
    assert [n for _, n in runs(sig)] == expected_runs
    assert progressiveness(sig) == pytest.approx(expected)
    stats = signature_stats(sig)
    assert stats["num_runs"] == len(expected_runs) and stats["mean_run_length"] == pytest.approx(np.mean(expected_runs))


def test_layer_agreement_and_halves():
    sigs = [[0, 1, 2, 2], [1, 1, 2, 2], [2, 0, 2, 2]]
    assert study.layer_agreement(sigs) == pytest.approx([0.0, 1 / 3, 1.0, 1.0])
    assert study.half_means([0.0, 1 / 3, 1.0, 1.0]) == pytest.approx((1 / 6, 1.0))
    assert study.half_means([0.0, 5.0, 1.0]) == pytest.approx((0.0, 1.0))  # the middle layer is left out


def _record(seed, one_hot, acc_reg, acc_unreg, prog):
    org = lambda h, p: {t: dict(one_hotness=h, progressiveness=p, signature=[0, 1], layer_one_hotness=[h, h])
                        for t in ("a", "b")}
    return dict(seed=seed,
                regularised=dict(accuracy=dict(a=acc_reg, b=acc_reg), organisation=org(one_hot, prog),
                                 layer_agreement=[0.0, 1.0], mean_one_hotness=one_hot, mean_progressiveness=prog),
                unregularised=dict(accuracy=dict(a=acc_unreg, b=acc_unreg), organisation=org(0.4, 0.0),
                                   layer_agreement=[0.5, 0.5], mean_one_hotness=0.4, mean_progressiveness=0.0))


def test_multitask_claims_are_decided_from_intervals():
    records = [_record(0, 0.90, 0.88, 0.885, 0.5), _record(1, 0.92, 0.87, 0.875, 0.4), _record(2, 0.91, 0.89, 0.89, 0.6)]
    claims = {c["claim"].split(":")[0]: c["verdict"] for c in
              study.multitask_claims(records, one_hot_threshold=0.7, accuracy_tolerance=0.02)}
    assert claims["Mixture weights end close to one-hot"] == protocol.HOLDS
    assert claims["a"] == claims["b"] == protocol.HOLDS          # within 2 points on every seed
    assert all(v == protocol.HOLDS for v in claims.values())
    costly = [_record(s, 0.5, 0.80 + 0.001 * s, 0.88, -0.5) for s in range(3)]
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in
                study.multitask_claims(costly, one_hot_threshold=0.7, accuracy_tolerance=0.02)}
    assert verdicts["Mixture weights end close to one-hot"] == protocol.FAILS
    assert verdicts["a"] == protocol.FAILS
    single = study.multitask_claims(records[:1], one_hot_threshold=0.7, accuracy_tolerance=0.02)
    assert all(c["verdict"] == protocol.INCONCLUSIVE for c in single)


def _digits_like(name, seed, n=60, classes=3):
    r = np.random.default_rng(seed)
    labels = (np.arange(2 * n) % classes).astype(np.int32)
    images = (r.random((2 * n, 16, 16, 1)) * 0.3 + labels[:, None, None, None] / classes).astype(np.float32)
    return data.Dataset(name, images[:n], labels[:n], images[n:], labels[n:], classes)


def test_source_chosen_on_validation_ignores_the_target_test_labels():
    """The source (and its scores) come from the target's validation split: shuffling the target's test labels
    changes neither. Sources are untrained but different trees, so their scores differ; no target trains."""
    cfg = isometric.default_config(width=4, expansion=2, depth=3, num_templates=3, stride=4, out_dim=8)
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    sources = [_digits_like("a", 0), _digits_like("b", 1)]
    trained_sources = (M.Outcome(dict(a=0.0, b=1.0), {}, {}), train.Trained(params, stats, None, 0, 0))
    recipe = T.Recipe(common.optim_config(lr=0.05), 1, 8, 0, 3.0, 0.0, 1.0, log_every=0, verbose=False)
    target = _digits_like("t", 2)
    shuffled = dataclasses.replace(target, test_labels=np.random.default_rng(0).permutation(target.test_labels))
    kw = dict(inits=[], num_steps=1, interp_temperature=0.0, interp_score_examples=40, interp_lr_mult=1.0,
              interp_tune_steps=0, trained_sources=trained_sources)
    one = T.compare_transfer_inits(cfg, recipe, sources, target, **kw)
    two = T.compare_transfer_inits(cfg, recipe, sources, shuffled, **kw)
    assert one.extra["source_task"] == two.extra["source_task"]
    assert one.extra["validation_scores"] == two.extra["validation_scores"]
    # the scores are those on the validation split carved from the target's training data, not the test set's
    fit, val = protocol.validation_split(target, 0.2, recipe.seed)
    start, start_stats, _ = X.new_task_start(cfg, params, stats, 3, 1, 0)
    best, scored = X.choose_source(cfg, start, start_stats, val, ["task0", "task1"], 40, 0)
    assert one.extra["validation_scores"] == pytest.approx(dict(zip(["a", "b"], scored["scores"])))
    assert one.extra["source_task"] == {"task0": "a", "task1": "b"}[best]
