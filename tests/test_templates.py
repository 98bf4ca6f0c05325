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
