"""Head2Toe: pooling formula, normalisation, cached all-layer features, selection, CV, sklearn check,
fine-tuning baselines, the bank adapter, smoke run."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import checkpoint, data, models, params as P, supervised
from modular.data import vtab_like
from modular.methods import head2toe
from modular.methods.head2toe import features as feats
from modular.methods.head2toe import finetune as ft
from modular.methods.head2toe import heads, select


@pytest.mark.parametrize("channels,width,target,expected", [
    (16, 16, 512, 3),    # n = int(sqrt(32)) = 5 -> pool 16 // 5 = 3
    (32, 8, 512, 2),     # n = 4 -> pool 2
    (64, 4, 512, 2),     # n = int(sqrt(8)) = 2 -> pool 2
    (512, 4, 512, 4),    # C >= T: global average pool
    (1024, 7, 512, 7),
    (8, 16, 8192, 1),    # n = 32 > W: finest pooling is one pixel
])
def test_pool_size_matches_the_papers_formula(channels, width, target, expected):
    assert feats.pool_size(channels, width, target) == expected
    if channels < target:
        assert expected == max(1, width // max(1, int(math.sqrt(target // channels))))


def test_pool_layer_averages_disjoint_patches():
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 16)).astype(np.float32)
    out = np.asarray(feats.pool_layer(jnp.asarray(x), 512))
    ref = x[:, :15, :15].reshape(2, 5, 3, 5, 3, 16).mean(axis=(2, 4)).reshape(2, -1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert feats.pool_layer(jnp.ones((2, 4, 4, 600)), 512).shape == (2, 600)   # global pool
    assert feats.pool_layer(jnp.ones((3, 16, 8)), 32).shape == (3, 4 * 8)      # tokens: 32/8 = 4 groups of 4
    with pytest.raises(ValueError, match="Cannot pool"):
        feats.pool_layer(jnp.ones((2, 2, 2, 2, 2)), 8)


def test_token_pooling_worked_example():
    """The official 1-D rule by hand: N=7 tokens of C=2, T=6 -> T/C = 3 groups, window int(7/3) = 2, the 7th
    token dropped; C >= T pools globally; fewer values than T keeps every token (the official code's window
    would be 0, which it pools globally: our one documented difference)."""
    x = np.array([[[1, 10], [3, 20], [5, 30], [7, 40], [9, 50], [11, 60], [100, 100]]], np.float32)
    assert feats.token_pool_size(7, 2, 6) == 2
    np.testing.assert_allclose(np.asarray(feats.pool_layer(jnp.asarray(x), 6)),
                               [[2, 15, 6, 35, 10, 55]])          # token pairs (1,3), (5,7), (9,11), window-major
    np.testing.assert_allclose(np.asarray(feats.pool_layer(jnp.asarray(x), 2)), [[136 / 7, 310 / 7]], rtol=1e-6)
    assert feats.token_pool_size(7, 2, 2) == 7                     # C >= T: one window over every token
    assert feats.token_pool_size(3, 2, 64) == 1                    # 6 values < T: official window 0 -> ours 1
    np.testing.assert_allclose(np.asarray(feats.pool_layer(jnp.asarray(x[:, :3]), 64)), [[1, 10, 3, 20, 5, 30]])
    with pytest.raises(ValueError, match="token_pool_size"):
        feats.token_pool_size(0, 2, 6)


def test_l2_normalise_keeps_zero_vectors_zero():
    x = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    out = np.asarray(feats.l2_normalise(x))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert np.all(np.isfinite(out))


@pytest.fixture(scope="module")
def tiny():
    model = models.build(common.model_config(width=4), 10)
    variables = models.init(model, jax.random.key(0), (1, 8, 8, 1))
    return model, variables


def test_cache_holds_every_layer_normalised(tiny):
    model, variables = tiny
    x = np.random.default_rng(0).uniform(size=(12, 8, 8, 1)).astype(np.float32)
    cache = feats.cache_features(model, variables, x[:8], x[8:], target=16)
    names = feats.forward_order(model, variables, x[:1])
    assert names[0] == "stem" and names[-1] == "logits" and names != sorted(names)   # input to output
    assert set(cache.layers) | set(cache.aliases) == set(names)          # every activation is there once
    assert "logits" in cache.layers and "stem" in cache.layers
    assert cache.train.shape == (8, cache.num_features) and cache.test.shape == (4, cache.num_features)
    for a, b in cache.layers.values():
        norms = np.linalg.norm(cache.train[:, a:b], axis=1)
        assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))
    assert len(cache.columns(["pre_logits"])) == 16                      # stage3 width 4 * 4
    with pytest.raises(ValueError, match="Unknown feature layers"):
        cache.columns(["nope"])


def test_head2toe_ft_trains_on_the_same_features_the_cache_holds(tiny):
    model, variables = tiny
    x = np.random.default_rng(1).uniform(size=(6, 8, 8, 1)).astype(np.float32)
    cache = feats.cache_features(model, variables, x, x[:2], target=16)
    live, _ = jax.jit(feats.features_fn(model, tuple(cache.layers), 16, "eval"))(variables, x)
    np.testing.assert_allclose(np.asarray(live), cache.train, rtol=1e-5, atol=1e-5)


def test_vit_tokens_pool_in_one_dimension():
    cfg = models.default_config("vit")
    cfg.update(width=8, depth=2, heads=2)
    model = models.build(cfg, 10)
    variables = models.init(model, jax.random.key(0), (1, 16, 16, 1))
    x = np.random.default_rng(0).uniform(size=(6, 16, 16, 1)).astype(np.float32)
    cache = feats.cache_features(model, variables, x[:4], x[4:], target=64)
    assert {"block1/pre_attention", "block1/attention", "block1/mlp", "block2"} <= set(cache.layers)
    a, b = cache.layers["block1/attention"]
    assert b - a == 64     # 16 tokens x C=8 < T=64: T / C = 8 groups, windows of int(16 / 8) = 2 tokens
    assert cache.layers["pre_logits"][1] - cache.layers["pre_logits"][0] == 8


def _informative(n=400, d=60, k=3, seed=0):
    """Only the first 6 features carry the label; the rest are noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, :6] += 2.0 * np.eye(k)[y].repeat(2, axis=1)
    return x, y.astype(np.int32)


def test_group_lasso_scores_find_the_informative_features():
    x, y = _informative()
    mask, head, scores = select.head2toe(x, y, 3, fraction=0.1, coef=1e-2, lr=0.05, steps=300)
    assert set(np.flatnonzero(mask)) == set(range(6))
    assert np.all(head["w"][mask == 0] == 0)                              # only kept rows are stored
    assert heads.head_accuracy(head, x * mask, y) > 0.9


def test_layerwise_mask_takes_whole_layers():
    scores = np.array([0.1, 0.1, 0.9, 0.8, 0.0, 0.0])
    layers = {"a": (0, 2), "b": (2, 4), "c": (4, 6)}
    np.testing.assert_array_equal(select.layerwise_mask(scores, layers, 0.3), [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(select.top_fraction_mask(scores, 0.3), [0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match="fraction"):
        select.top_fraction_mask(scores, 0.0)


def test_cross_validation_covers_the_grid():
    x, y = _informative(n=120)
    best, rows = select.cross_validate(x, y, 3, fractions=[0.1, 0.5], coefs=[1e-3], lrs=[0.05], steps=50, folds=2)
    assert len(rows) == 2 and best in rows and 0 <= best["val_accuracy"] <= 1
    with pytest.raises(ValueError, match="folds"):
        select.fold_indices(5, 1, 0)


def test_folds_partition_the_examples_and_follow_the_seed():
    splits = select.fold_indices(10, 3, seed=0)
    assert sorted(np.concatenate([va for _, va in splits]).tolist()) == list(range(10))
    for tr, va in splits:
        assert sorted(np.concatenate([tr, va]).tolist()) == list(range(10))
    again = select.fold_indices(10, 3, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(splits, select.fold_indices(10, 3, seed=1)))


def test_finetuning_loads_every_source_weight_but_the_classifier(tiny):
    _, source = tiny
    # A fresh model for another label space: a 4-way classifier, every other leaf zero.
    fresh = P.unflatten({p: np.zeros(np.shape(v)[:-1] + (4,) if "/classifier/" in p else np.shape(v), np.float32)
                         for p, v in P.flatten(source).items()})
    loaded = P.load_matching(fresh, source, dont_load=ft.FRESH_CLASSIFIER)
    flat, flat_src, flat_fresh = P.flatten(loaded), P.flatten(source), P.flatten(fresh)
    for path, leaf in flat.items():
        expected = flat_fresh[path] if "/classifier/" in path else flat_src[path]
        np.testing.assert_array_equal(leaf, expected)
    assert any("/classifier/" in p for p in flat) and any("batch_stats/" in p for p in flat)


def test_head2toe_ft_loss_trains_kept_rows_only_and_updates_bn(tiny):
    model, variables = tiny
    x = np.random.default_rng(2).uniform(size=(8, 8, 8, 1)).astype(np.float32)
    cache = feats.cache_features(model, variables, x, x[:2], target=16)
    names = tuple(cache.layers)
    d = cache.num_features
    mask = np.zeros(d, np.float32)
    mask[: d // 3] = 1.0
    params = {"extractor": variables["params"], "head": {"w": np.full((d, 3), 0.1, np.float32),
                                                         "b": np.zeros(3, np.float32)}}
    state = {"extractor": {"batch_stats": variables["batch_stats"]}, "head": {"feature_mask": mask}}
    slices = tuple(cache.layers.values())
    loss_fn = ft.head2toe_ft_loss(model, names, 16, slices)
    assert ft.head2toe_ft_loss(model, names, 16, slices) is loss_fn        # memoised: one compiled step
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(np.arange(8) % 3, jnp.int32)}
    grads, (new_state, metrics) = jax.jit(jax.grad(loss_fn, has_aux=True))(params, state, batch, jax.random.key(0))
    w_grad = np.asarray(grads["head"]["w"])
    assert np.all(w_grad[mask == 0] == 0) and np.any(w_grad[mask == 1] != 0)
    assert P.count(grads["extractor"]) == P.count(variables["params"])
    np.testing.assert_array_equal(new_state["head"]["feature_mask"], mask)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(new_state["extractor"]),
                                                          jax.tree.leaves(state["extractor"])))
    assert 0 <= float(metrics["accuracy"]) <= 1


@pytest.mark.parametrize("fractions", [[0.2], [0.1, 0.3]])
def test_adapt_writes_the_kept_features_and_their_head_rows(tiny, tmp_path, fractions):
    model, variables = tiny
    source = supervised.Classifier(model=model, variables=variables, fit=None)
    ds = data.load("digits", image_size=8).subset(max_train=60, seed=0)
    path = str(tmp_path / "head2toe" / "digits.msgpack")
    adapted = head2toe.adapt(source, ds, target_size=16, fractions=fractions, coefs=[1e-3], lrs=[0.05], steps=10,
                             folds=2, seed=0, bank_path=path, meta={"task": "digits"})
    kept, k = adapted.info["kept"], ds.num_classes
    assert adapted.info["chosen"]["fraction"] in fractions
    assert (adapted.info["chosen"]["val_accuracy"] is None) == (len(fractions) == 1)   # one point: no CV
    assert kept == select.num_kept(adapted.info["total_features"], adapted.info["chosen"]["fraction"])
    assert adapted.trainable == kept * k + k and adapted.stored == kept + kept * k + k
    assert 0 <= adapted.accuracy <= 1 and adapted.file_bytes == os.path.getsize(path)
    tree, meta = checkpoint.import_subtree(path, backbone=variables["params"])
    assert tree["features"].shape == (kept,) and tree["head"]["w"].shape == (kept, k)
    assert meta["task"] == "digits" and meta["target_size"] == 16
    cache = feats.cache_features(model, variables, ds.train_images, ds.test_images, 16)
    logits = cache.test[:, tree["features"]] @ tree["head"]["w"] + tree["head"]["b"]   # the file alone predicts
    assert float(np.mean(np.argmax(logits, -1) == ds.test_labels)) == pytest.approx(adapted.accuracy)


def test_regulariser_names_are_checked():
    with pytest.raises(ValueError, match="regulariser"):
        heads.train_linear(np.zeros((4, 3), np.float32), np.zeros(4, np.int32), 2, reg="l3")


def test_linear_head_matches_sklearn_logistic_regression(tiny):
    """Independent check: our optax softmax regression vs scikit-learn's on the same cached pre-logits."""
    from sklearn.linear_model import LogisticRegression
    model, variables = tiny
    ds = data.load("digits", image_size=8).subset(max_train=600, seed=0)
    cache = feats.cache_features(model, variables, ds.train_images, ds.test_images, target=16)
    cols = cache.columns(["pre_logits"])
    x, xt = cache.train[:, cols], cache.test[:, cols]
    c, n = 10.0, len(x)
    # sklearn minimises 0.5||W||^2 + C * sum CE  ==  mean CE + ||W||^2 / (2 C N)
    ours = heads.train_linear(x, ds.train_labels, 10, reg="l2", coef=1 / (2 * c * n), lr=0.05, steps=1500)
    sk = LogisticRegression(C=c, max_iter=5000).fit(x, ds.train_labels)
    acc_ours = heads.head_accuracy(ours, xt, ds.test_labels)
    acc_sk = float(np.mean(sk.predict(xt) == ds.test_labels))
    assert acc_sk > 0.3
    assert abs(acc_ours - acc_sk) <= 0.015, (acc_ours, acc_sk)


def test_structured_suite_tasks():
    for name in ("rotation", "location", "count"):
        ds = vtab_like.load_task(name, image_size=8, max_train=40, max_test=20)
        assert ds.num_classes == 4 and ds.train_images.shape == (40, 8, 8, 1) and len(ds.test_labels) == 20
        assert set(np.unique(ds.train_labels)) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="structured task"):
        vtab_like.structured("colour", np.zeros((2, 8, 8, 1), np.float32), 0)


def test_smoke_run_end_to_end(tmp_path):
    from configs import head2toe as cfg_module
    from experiments import run as run_module
    from modular import protocol
    config = cfg_module.get_config("smoke")
    res = run_module.run(config, str(tmp_path))
    assert set(res["accuracy"]) == set(head2toe.METHODS)
    assert all(0 <= v <= 1 for v in res["accuracy"].values())
    axes = head2toe.grid_axes(config.head2toe)
    for method, points in res["grids"].items():          # the recorded grids: one lr x steps grid per family
        assert sorted({(p["lr"], p["steps"]) for p in points}) == sorted(
            (b["lr"], b["steps"]) for b in protocol.grid(lr=axes[method]["lr"], steps=axes[method]["steps"])), method
    # one steps value is not a searched axis; every other choice of a 2-value lr grid is on an edge
    assert set(res["grid_edges"]) == set(head2toe.METHODS)
    assert all(e["axis"] != "steps" for edges in res["grid_edges"].values() for e in edges)
    assert res["grid_edges"]["linear"] and res["grid_edges_note"] in res["readme_tables"]["head2toe"]
    # a 2-value grid has no interior, so no edge choice can be a tie; the scores that tell ties are recorded
    assert all(e["seeds"] and not e["tied"] for edges in res["grid_edges"].values() for e in edges)
    for method, run in res["per_task"][0][0]["methods"].items():
        assert len(run["grid_points"]) == len(run["grid_validation"]) and run["chosen"] in run["grid_points"], method
    flops = res["per_task"][0][0]["flops"]
    assert 0 < flops["ratio_paper"] < flops["ceiling"] < flops["ratio_forward_backward"] * 10
    for target in config.data.targets:
        for method, chosen in res["chosen"]["0"][target].items():
            assert chosen in [dict(p, fraction=chosen["fraction"]) if "fraction" in chosen and "fraction" not in p
                              else p for p in res["grids"][method]], (target, method)
    task = res["per_task"][0][0]
    assert 0 < task["selected_features"] <= task["total_features"]
    assert task["num_fit"] + task["num_validation"] == task["num_train"]
    assert task["layerwise_features"] == {"layerwise": task["selected_features"],
                                          "layerwise_group": task["selected_features"]}
    # Test data never reaches a choice: the same comparison with the test labels shuffled chooses the same
    # setting for every method (fine-tuning, scratch and Head2Toe-FT included) and keeps the same features.
    import dataclasses
    from experiments import head2toe as driver
    from modular import supervised
    clf, _ = supervised.pretrained_backbone(config, str(tmp_path), verbose=False)
    ds = driver._load_target(task["task"], config, 0)
    shuffled = dataclasses.replace(ds, test_labels=np.random.default_rng(5).permutation(ds.test_labels))
    again = head2toe.compare_on_task(shuffled, clf, config.head2toe, model_cfg=config.model, seed=0,
                                     val_fraction=config.data.val_fraction)
    for m in head2toe.METHODS:
        assert again["methods"][m]["chosen"] == task["methods"][m]["chosen"], m
        assert again["methods"][m]["grid_validation"] == task["methods"][m]["grid_validation"], m
    assert again["kept_features"] == task["kept_features"]
    assert again["accuracy"] != task["accuracy"]                            # the shuffled labels were read
    tested = [c for c in res["claims"] if c["kind"] != protocol.UNTESTABLE]
    assert all(c["verdict"] == "inconclusive" for c in tested)            # one seed: never a verdict
    assert {c["claim"].split(" (")[0] for c in res["claims"] if c["kind"] == protocol.UNTESTABLE} == {
        "Head2Toe's gain over Linear is largest on targets of low domain affinity",
        "Head2Toe adapts with a small fraction of fine-tuning's training FLOPs"}
    assert "head2toe" in res["readme_tables"] and "share the Linear term" in res["affinity_gain_correlation"]["note"]
    for plot in ("kept_per_layer.png", "gain_vs_affinity.png"):
        assert os.path.exists(tmp_path / "plots" / plot)
    assert os.path.exists(tmp_path / "results.json")
    with pytest.raises(ValueError, match="config.data.target"):
        config.data.targets = []
        run_module.run(config, str(tmp_path / "no_targets"))
