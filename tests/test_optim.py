"""Optimizers from rules: frozen subtrees get no update and keep no optimizer state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from modular import optim, params as P


def tree():
    return {"extractor": {"conv": {"kernel": jnp.ones((3, 3, 1, 8))}, "bn": {"scale": jnp.ones(8)}},
            "head": {"classifier": {"kernel": jnp.ones((8, 10)), "bias": jnp.zeros(10)}}}


def grads_like(t):
    return jax.tree.map(lambda x: jnp.full_like(x, 0.5), t)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "momentum"])
def test_frozen_params_get_no_update_and_no_state(name):
    t = tree()
    cfg = common.optim_config(name=name, lr=0.1, weight_decay=1e-2, lr_mults=[("extractor/.*", 0.0)])
    tx = optim.build(cfg, t, num_steps=10)
    state = tx.init(t)
    updates, state = tx.update(grads_like(t), state, t)
    new = optax.apply_updates(t, updates)
    for p, v in P.flatten(new["extractor"]).items():
        np.testing.assert_array_equal(v, P.flatten(t["extractor"])[p])
    assert not np.allclose(new["head"]["classifier"]["kernel"], t["head"]["classifier"]["kernel"])
    n_head = P.count(t["head"])
    expected = {"adam": 2 * n_head, "adamw": 2 * n_head, "sgd": 0, "momentum": n_head}[name]
    assert optim.state_size(state) == expected  # nothing is kept for the 296 frozen values


def test_no_freeze_keeps_state_for_everything():
    t = tree()
    tx = optim.build(common.optim_config(name="adam"), t, num_steps=10)
    assert optim.state_size(tx.init(t)) == 2 * P.count(t)


def test_lr_multipliers_scale_updates():
    t = tree()
    cfg = common.optim_config(name="sgd", lr=0.1, schedule="constant", lr_mults=[("head/.*", 10.0)])
    tx = optim.build(cfg, t, num_steps=10)
    updates, _ = tx.update(grads_like(t), tx.init(t), t)
    np.testing.assert_allclose(updates["extractor"]["bn"]["scale"], -0.05, rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["classifier"]["bias"], -0.5, rtol=1e-6)


def test_trainable_mask_and_table():
    t = tree()
    cfg = common.optim_config(lr_mults=[("head/.*", 1.0)], default_mult=0.0)
    mask = P.flatten(optim.trainable_mask(t, cfg))
    assert mask["head/classifier/kernel"] and not mask["extractor/conv/kernel"]
    text = optim.trainable_table(t, cfg)
    assert "frozen" in text and "train lrx1" in text
    assert optim.trainable_count(t, optim.trainable_mask(t, cfg)) == P.count(t["head"])


def test_override_copies_and_leaves_the_locked_base_alone():
    base = common.optim_config(lr=0.1)
    base.lock()
    cfg = optim.override(base, lr=0.5, lr_mults=[("head/.*", 1.0)], default_mult=0.0)
    assert (cfg.lr, cfg.default_mult, list(cfg.lr_mults)) == (0.5, 0.0, [("head/.*", 1.0)])
    assert (base.lr, base.default_mult, list(base.lr_mults)) == (0.1, 1.0, [])


def test_schedules():
    cfg = common.optim_config(lr=1.0, schedule="warmup_cosine", warmup_steps=10)
    s = optim.schedule(cfg, 100)
    assert float(s(0)) == 0.0 and abs(float(s(10)) - 1.0) < 1e-6 and float(s(100)) < 1e-6
    with pytest.raises(ValueError, match="Unknown learning-rate schedule"):
        optim.schedule(common.optim_config(schedule="exponential"), 10)
    with pytest.raises(ValueError, match="Unknown optimizer"):
        optim.build(common.optim_config(name="lion"), tree(), 10)
