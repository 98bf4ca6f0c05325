"""Template mixtures: generated weights, regularizers, signatures, freezing rules, end-to-end smoke run."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, templates as templates_config
from experiments import run as run_module
from modular import optim, params as P
from modular.methods import templates as T
from modular.models import isometric


def tiny(**kw):
    return isometric.default_config(**dict(dict(width=4, expansion=2, depth=3, num_templates=3, stride=4, out_dim=8), **kw))


def test_one_hot_mixture_equals_plain_net_with_those_weights():
    """A sequential one-hot signature over K=L templates is exactly a plain net whose layers are the templates."""
    mixed_cfg, plain_cfg = tiny(bn="shared"), tiny(bn="shared", num_templates=0)
    params, stats = isometric.init(mixed_cfg, jax.random.key(0), 1, [5])
    plain_params, _ = isometric.init(plain_cfg, jax.random.key(1), 1, [5])
    plain_params["shared"] = dict(params["shared"])
    plain_params["shared"]["layers"] = plain_params["shared"].pop("templates")
    plain_params["task0"] = dict(head=params["task0"]["head"])
    x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 1))
    a, _, sa = isometric.apply(mixed_cfg, params, stats, x, train=True, signature=[0, 1, 2])
    b, _, sb = isometric.apply(plain_cfg, plain_params, stats, x, train=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), sa, sb)
    assert a.shape == (4, 5)


def test_layer_weights_are_softmax_mixtures_of_templates():
    cfg = tiny(se=True, bn="mixed")
    params, _ = isometric.init(cfg, jax.random.key(0), 1, [3, 4])
    xi = jax.nn.softmax(params["task1"]["mixture"], -1)
    w = isometric.layer_weights(cfg, params, 1)
    bank = params["shared"]["templates"]
    assert set(w) == set(bank) and {"se_down", "dw_b", "bn1_scale"} <= set(w)
    np.testing.assert_allclose(w["dw"][2], sum(xi[2, k] * bank["dw"][k] for k in range(3)), rtol=1e-5, atol=1e-6)


def test_regularizers():
    k = 4
    one_hot, uniform = jax.nn.one_hot(jnp.array([0, 2]), k), jnp.full((2, k), 1 / k)
    assert float(T.entropy(one_hot)) == pytest.approx(0.0, abs=1e-5)
    assert float(T.entropy(uniform)) == pytest.approx(np.log(k), rel=1e-4)
    bank = {"w": jax.random.normal(jax.random.key(0), (k, 3, 5))}
    assert float(T.clustering(one_hot, bank)) == pytest.approx(0.0, abs=1e-6)
    assert float(T.clustering(uniform, bank)) > 0.1
    g = jax.grad(lambda x: T.entropy(jax.nn.softmax(x)))(jnp.array([[1.0, 0.0, 0.0, 0.0]]))
    assert float(g[0, 0]) < 0  # lowering entropy raises the dominant logit


def test_signatures_and_one_hotness():
    assert T.signature("sequential", 6, 3) == [0, 0, 1, 1, 2, 2]
    assert T.signature("cyclic", 5, 2) == [0, 1, 0, 1, 0]
    r = T.signature("random", 8, 3, seed=1)
    assert len(r) == 8 and set(r) <= {0, 1, 2} and r == T.signature("random", 8, 3, seed=1)
    assert T.signature("learned", 6, 3) is None
    with pytest.raises(ValueError, match="Unknown signature"):
        T.signature("zigzag", 6, 3)
    assert isometric.one_hotness(jax.nn.one_hot(jnp.array([1, 0]), 3)) == pytest.approx(1.0)
    assert isometric.one_hotness(jnp.full((2, 4), 0.25)) == pytest.approx(0.25)


def test_transfer_rules_train_only_target_private_parts():
    cfg = tiny()
    params, _ = isometric.init(cfg, jax.random.key(0), 1, [3, 3, 3])
    ocfg = common.optim_config(lr_mults=T.transfer_rules(2, "source", 3.0), default_mult=0.0)
    mask = P.flatten(optim.trainable_mask(params, ocfg))
    trained = sorted(k for k, v in mask.items() if v)
    assert trained and all(k.startswith("task2/") for k in trained)
    assert "task2/mixture" in trained and any(k.startswith("task2/bn/") for k in trained)
    ocfg = common.optim_config(lr_mults=T.transfer_rules(2, "bn_logits", 3.0), default_mult=0.0)
    mask = P.flatten(optim.trainable_mask(params, ocfg))
    assert not mask["task2/mixture"] and mask["task2/head/kernel"]


def test_bad_input_is_one_sentence():
    with pytest.raises(ValueError, match="Unknown BN mode"):
        isometric.init(tiny(bn="sometimes"), jax.random.key(0), 1, [3])
    config = templates_config.get_config("smoke")
    config.mode = "everything"
    with pytest.raises(ValueError, match="Unknown templates mode"):
        run_module.run(config, "/tmp/unused_templates_bad")


def test_smoke_multitask_end_to_end(tmp_path):
    config = templates_config.get_config("smoke")
    results = run_module.run(config, str(tmp_path))
    assert set(results["accuracy"]) == {"mnist5k", "mnist5k/invert"}
    assert all(0.0 <= a <= 1.0 for a in results["accuracy"].values())
    assert max(results["accuracy"].values()) > 0.15  # above chance (0.1) after 40 steps
    assert all(len(s) == config.model.depth for s in results["signature"].values())
    assert all(1 / config.model.num_templates - 1e-6 <= h <= 1 + 1e-6 for h in results["one_hotness"].values())
    counts = results["params"]
    assert counts["shared"] > counts["per_task"]["task0"] > 0
    assert "paper" in results and results["table"]
    assert all(os.path.exists(p) for p in results["plots"])
    assert os.path.exists(tmp_path / "results.json")


def test_moment_distance():
    from modular.methods import templates_adapt as A
    a = jax.random.normal(jax.random.key(0), (64, 5))
    assert float(A.moment_distance(a, a)) == pytest.approx(0.0, abs=1e-8)
    assert float(A.moment_distance(a, a + 1.0)) > 1.0


# --- transfer by interpolating source mixtures -------------------------------------------------------

def test_interpolation_weights_sum_to_one_and_favour_the_more_accurate_source():
    from modular.methods import templates_transfer as X
    for temperature in (0.0, 0.05, 1.0):
        w = X.interpolation_weights([0.2, 0.9, 0.5], temperature)
        assert w.shape == (3,) and float(w.sum()) == pytest.approx(1.0) and np.all(w >= 0)
        assert w[1] > w[2] > w[0]  # ordered like the accuracies
    np.testing.assert_allclose(X.interpolation_weights([0.2, 0.6], 0.0), [0.25, 0.75])
    assert X.interpolation_weights([0.2, 0.9], 0.01)[1] > 0.99  # low temperature -> best source only
    np.testing.assert_allclose(X.interpolation_weights([0.0, 0.0], 0.0), [0.5, 0.5])
    with pytest.raises(ValueError, match="finite source scores"):
        X.interpolation_weights([], 0.1)


def test_interpolated_logits_are_the_convex_combination_of_source_mixtures():
    from modular.methods import templates_transfer as X
    logits = jax.random.normal(jax.random.key(0), (3, 4, 2))  # S=3 sources, L=4, K=2
    xi = jax.nn.softmax(logits, -1)
    one = jax.nn.softmax(X.interpolate_logits(logits, jnp.array([0.0, 1.0, 0.0])), -1)
    np.testing.assert_allclose(one, xi[1], rtol=1e-5, atol=1e-6)
    w = jnp.array([0.5, 0.3, 0.2])
    mixed = jax.nn.softmax(X.interpolate_logits(logits, w), -1)
    np.testing.assert_allclose(mixed, 0.5 * xi[0] + 0.3 * xi[1] + 0.2 * xi[2], rtol=1e-5, atol=1e-6)


def _two_sources_and_target(cfg):
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3, 3])
    return params, stats


def test_source_scores_rank_the_source_that_fits_the_target_data_first():
    """Source 0 always predicts class 0, source 1 class 2; the target data is mostly class 0."""
    from modular.methods import templates_transfer as X
    cfg = tiny()
    params, stats = _two_sources_and_target(cfg)
    for t, c in ((0, 0), (1, 2)):
        params[f"task{t}"] = dict(params[f"task{t}"], head=dict(kernel=jnp.zeros((8, 3)),
                                                                 bias=10.0 * jax.nn.one_hot(c, 3)))
    images = np.asarray(jax.random.uniform(jax.random.key(1), (20, 16, 16, 1)))
    labels = np.array([0] * 15 + [2] * 5)
    scored = X.source_scores(cfg, params, stats, images, labels, [0, 1], num_classes=3)
    np.testing.assert_allclose(scored["scores"], [0.75, 0.25])
    assert scored["kind"] == ["head", "head"]
    w = X.interpolation_weights(scored["scores"], 0.1)
    assert w[0] > 0.9 and float(w.sum()) == pytest.approx(1.0)
    probe = X.source_scores(cfg, params, stats, images, labels, [0], num_classes=5)  # other label space
    assert probe["kind"] == ["probe"] and 0.0 <= probe["scores"][0] <= 1.0


def test_learned_interpolation_trains_only_the_coefficients_and_materializes():
    from modular.methods import templates_transfer as X
    cfg = tiny()
    params, stats = _two_sources_and_target(cfg)
    src = X.source_logits(params, [0, 1])
    params = X.init_interp(params, 2, 2)
    np.testing.assert_allclose(jax.nn.softmax(params["task2"]["interp"]), [0.5, 0.5], rtol=1e-6)
    ocfg = common.optim_config(lr_mults=X.learned_interp_rules(2, 10.0), default_mult=0.0)
    mask = P.flatten(optim.trainable_mask(params, ocfg))
    trained = sorted(k for k, v in mask.items() if v)
    assert "task2/interp" in trained and "task2/mixture" not in trained
    assert all(k.startswith("task2/") for k in trained) and "task2/head/kernel" in trained
    loss = X.learned_interpolation_loss(T.multitask_loss(cfg, tasks=[2], signatures={2: None}), 2, src)
    batch = dict(image2=jax.random.uniform(jax.random.key(1), (8, 16, 16, 1)), label2=jnp.arange(8) % 3)
    grads = jax.jit(jax.grad(lambda p: loss(p, stats, batch, None)[0]))(params)
    assert float(jnp.abs(grads["task2"]["interp"]).sum()) > 0   # alpha gets a gradient
    assert float(jnp.abs(grads["task2"]["mixture"]).sum()) == 0  # the stored xi is overwritten, not used
    params["task2"]["interp"] = jnp.array([2.0, -1.0])
    out, w = X.materialize(params, 2, src)
    assert "interp" not in out["task2"] and float(w.sum()) == pytest.approx(1.0) and w[0] > w[1]
    np.testing.assert_allclose(isometric.mixture_weights(out, 2),
                               w[0] * jax.nn.softmax(src[0], -1) + w[1] * jax.nn.softmax(src[1], -1), atol=1e-6)


# --- adversarial adaptation of the target's mixture weights --------------------------------------------

def test_gradient_reversal_is_identity_forward_and_negated_backward():
    from modular.methods import templates_adapt as A
    x = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(A.gradient_reversal(x, 0.5), x)
    f = lambda v: jnp.sum(v ** 2)
    np.testing.assert_allclose(jax.grad(lambda v: f(A.gradient_reversal(v, 0.5)))(x), -0.5 * jax.grad(f)(x))


@pytest.mark.parametrize("formulation", ["adda", "grl"])
def test_adversarial_objective_trains_discriminator_to_separate_and_target_to_fool(formulation):
    from modular.methods import templates_adapt as A
    d = A.discriminator_init(jax.random.key(0), 6, hidden=8)
    fs = jax.random.normal(jax.random.key(1), (64, 6)) + 1.0
    ft = jax.random.normal(jax.random.key(2), (64, 6)) - 1.0
    obj = lambda d, fs, ft: A.adversarial_terms(d, fs, ft, formulation)[0]
    gd, gs, gt = jax.grad(obj, argnums=(0, 1, 2))(d, fs, ft)
    assert float(jnp.abs(gs).sum()) == 0  # the source side is a constant
    d_loss = lambda d: A.adversarial_terms(d, fs, ft, formulation)[1]["disc_loss"]
    d_new = jax.tree.map(lambda p, g: p - 0.05 * g, d, gd)
    assert float(d_loss(d_new)) < float(d_loss(d))  # a descent step on the objective helps D separate
    source_logit = lambda f: jnp.mean(A.discriminator_apply(d, f))
    assert float(source_logit(ft - 0.5 * gt)) > float(source_logit(ft))  # ...and makes targets look like source
    if formulation == "grl":  # target gradient = minus the discriminator loss gradient
        plain = jax.grad(lambda f: A._bce(A.discriminator_apply(d, f), 0.0))(ft)  # no reversal layer
        np.testing.assert_allclose(gt, -plain, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="Unknown adversarial formulation"):
        A.adversarial_terms(d, fs, ft, "wgan")


def test_adversarial_adaptation_moves_only_target_mixture_and_discriminator():
    from modular import train
    from modular.methods import templates_adapt as A
    cfg = tiny()
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    params = A.add_discriminator(params, jax.random.key(1), cfg.out_dim, hidden=8)
    ocfg = common.optim_config(lr=0.05, lr_mults=A.adaptation_rules(r"task1/mixture", 1.0, 3.0), default_mult=0.0)
    tx, trainable = optim.build(ocfg, params, 3), optim.trainable_mask(params, ocfg)
    loss = A.adversarial_loss(cfg, source_params=params, source_stats=stats, source_task=0, target_task=1)
    step = jax.jit(train.make_train_step(loss, tx, trainable))
    state = train.TrainState.create(params, stats, tx)
    batch = dict(image_src=jax.random.uniform(jax.random.key(2), (8, 16, 16, 1)),
                 image_tgt=1.0 - jax.random.uniform(jax.random.key(3), (8, 16, 16, 1)))
    for i in range(3):
        state, metrics = step(state, batch, jax.random.key(i))
    assert {"disc_loss", "domain_accuracy"} <= set(metrics)
    before, after = P.flatten(params), P.flatten(state.params)
    changed = sorted(k for k in before if not np.array_equal(before[k], after[k]))
    assert "task1/mixture" in changed and any(k.startswith("adversary/") for k in changed)
    assert all(k == "task1/mixture" or k.startswith("adversary/") for k in changed), changed
    assert "adversary" not in A.strip_discriminator(state.params)
