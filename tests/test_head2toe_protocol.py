"""Head2Toe's comparison protocol: the vmapped grid equals training one setting alone, the refit
re-normalises each layer's kept subset, layer-wise selection takes exactly the matched count, every method
gets its family's lr x steps grid, adaptation FLOPs follow the paper's accounting. (That test labels never reach a choice is checked on the smoke run in
test_head2toe.py, which reuses its compiled programs.)"""
import numpy as np
import pytest

from modular import protocol, rng
from modular.methods import head2toe
from modular.methods.head2toe import grid


def _informative(n=200, d=24, k=3, seed=0):
    r = np.random.default_rng(seed)
    y = r.integers(0, k, n).astype(np.int32)
    x = r.normal(size=(n, d)).astype(np.float32)
    x[:, :6] += 2.0 * np.eye(k)[y].repeat(2, axis=1)
    return x, y


@pytest.mark.parametrize("renormalise", [False, True])
def test_vmapped_grid_equals_each_setting_alone(renormalise):
    x, y = _informative()
    layers = ((0, 8), (8, 16), (16, 24))
    masks = np.ones((3, 24), np.float32)
    masks[1, ::3] = 0
    masks[2, 8:16] = 0
    kw = dict(steps=30, layers=layers, renormalise=renormalise, batch_size=32, batch_seed=3)
    rows = [grid.penalty_row("l21", 1e-3), grid.penalty_row("l21_layers", 1e-2), grid.penalty_row("l1", 1e-3)]
    keys = [rng.key(0, "a"), rng.key(1, "a"), rng.key(2, "a")]
    together = grid.train_grid(x, y, 3, lrs=[0.1, 0.03, 0.01], coefs=rows, keys=keys, masks=masks, **kw)
    for g, lr in enumerate([0.1, 0.03, 0.01]):
        alone = grid.train_grid(x, y, 3, lrs=[lr], coefs=[rows[g]], keys=[keys[g]], masks=masks[g:g + 1], **kw)
        np.testing.assert_allclose(together["w"][g], alone["w"][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(together["b"][g], alone["b"][0], rtol=1e-4, atol=1e-6)
    acc = grid.grid_accuracy(together, x, y, masks=masks, layers=layers, renormalise=renormalise)
    assert acc.shape == (3,) and np.all(acc > 0.6)
    assert np.all(together["w"][1][masks[1] == 0] == 0)                     # dropped features keep no weight


def test_refit_renormalises_each_layers_kept_subset():
    """The re-normalised head equals a plain head on features whose kept subset of each layer has unit norm,
    which in turn equals normalising the kept columns of the raw (un-normalised) activations."""
    r = np.random.default_rng(1)
    raw = r.normal(size=(5, 10)).astype(np.float32)
    layers = ((0, 4), (4, 10))
    cache = np.concatenate([raw[:, a:b] / np.linalg.norm(raw[:, a:b], axis=1, keepdims=True) for a, b in layers], 1)
    mask = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0], np.float32)           # the second layer keeps nothing
    head = {"w": r.normal(size=(10, 3)).astype(np.float32), "b": r.normal(size=3).astype(np.float32)}
    by_hand = np.zeros_like(raw)
    kept = raw[:, [0, 2]]
    by_hand[:, [0, 2]] = kept / np.linalg.norm(kept, axis=1, keepdims=True)
    np.testing.assert_allclose(grid.renormalised(cache, mask, layers), by_hand, rtol=1e-5, atol=1e-6)
    ours = np.asarray(grid.logits(head, cache, mask, layers, renormalise=True))
    np.testing.assert_allclose(ours, by_hand @ (head["w"] * mask[:, None]) + head["b"], rtol=1e-4, atol=1e-5)


def test_layer_ranking_takes_exactly_the_matched_count():
    layers = {"a": (0, 3), "b": (3, 5), "c": (5, 9)}
    mask = head2toe.select.layer_ranking_mask({"a": 0.1, "b": 0.9, "c": 0.5}, layers, 5)
    np.testing.assert_array_equal(mask, [0, 0, 0, 1, 1, 1, 1, 1, 0])      # b whole, then c cut in column order
    with pytest.raises(ValueError, match="kept"):
        head2toe.select.layer_ranking_mask({"a": 0, "b": 0, "c": 0}, layers, 10)


def _settings():
    from configs import head2toe as cfg_module
    h = cfg_module.get_config("smoke").head2toe
    h.steps = [5, 10]
    return h


def test_every_method_of_a_family_gets_the_same_lr_steps_grid():
    h = _settings()
    grids = head2toe.settings_grids(h)
    heads_budget = sorted((lr, s) for lr in h.lrs for s in h.steps)
    network_budget = sorted((lr, s) for lr in h.network_lrs for s in h.steps)
    assert set(grids) == set(head2toe.METHODS)
    for method, points in grids.items():
        want = network_budget if method in head2toe.compare.BACKBONE_METHODS else heads_budget
        assert sorted({(p["lr"], p["steps"]) for p in points}) == want, method
    assert {p["fraction"] for p in grids["head2toe"]} == set(h.fractions)
    axes = head2toe.grid_axes(h)                           # what the edge check reads: the grids' own axes
    for method, points in grids.items():
        assert len(points) == int(np.prod([len(v) for v in axes[method].values()])), method
    del h["network_lrs"]                                   # a config without the key: one range for all
    assert {p["lr"] for p in head2toe.settings_grids(h)["finetune"]} == set(h.lrs)
    assert {p["coef"] for p in grids["all_l1"]} == set(h.baseline_coefs.l1)


def test_adaptation_flops_follow_the_papers_accounting():
    """XLA's counts: fine-tuning's forward+backward step costs more than its forward step, Head2Toe's cost is its
    feature pass plus head steps, and the paper's ratio never exceeds its ceiling t*B/N."""
    from configs import head2toe as cfg_module
    from modular import data, supervised
    from modular.methods.head2toe import costs
    config = cfg_module.get_config("smoke")
    ds = data.load("mnist5k", image_size=config.data.image_size, channels=config.data.channels, max_train=64)
    clf = supervised.train_classifier(ds, model_cfg=config.model, optim_cfg=config.optim, num_steps=1,
                                      batch_size=16, seed=0, verbose=False)
    kw = dict(image_shape=ds.image_shape, num_train=1000, batch_size=64, num_classes=4, num_features=2000,
              head2toe_steps=100, fractions=[0.05, 0.2])
    short, long = (costs.adaptation_flops(clf.model, clf.variables, finetune_steps=t, **kw) for t in (100, 400))
    assert short["finetune_forward_backward"] > 2 * short["finetune_paper"] > 0
    assert long["finetune_paper"] == 4 * short["finetune_paper"] and long["head2toe"] == short["head2toe"]
    assert short["head2toe"] == short["head2toe_features"] + short["head2toe_heads"]
    assert short["head2toe_heads"] > 0 and short["ceiling"] == 100 * 64 / 1000
    assert short["ratio_paper"] < short["ceiling"] and long["ratio_paper"] < long["ceiling"]
    step = costs.head_step_flops(2000, 4, 64, 1000)
    assert step > 2 * 64 * 2000 * 4             # at least the forward matmul's multiply-adds
