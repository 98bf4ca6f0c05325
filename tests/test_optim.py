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


@pytest.mark.parametrize("fields", [
    dict(schedule="constant"), dict(schedule="constant", warmup_steps=7), dict(schedule="cosine"),
    dict(schedule="warmup_cosine", warmup_steps=5), dict(schedule="cosine", warmup_steps=40),
    dict(schedule="step", decay_at=(0.5, 0.75), decay_factor=0.1),
    dict(schedule="step", decay_at=(0.3, 0.31), decay_factor=0.5, warmup_steps=3)])
@pytest.mark.parametrize("num_steps", [1, 10, 37])
def test_runtime_schedule_equals_the_static_schedule(fields, num_steps):
    """The schedule computed in the step from the state's rate and length is optax's schedule for that run."""
    cfg = common.optim_config(lr=0.3, **fields)
    static = optim.schedule(cfg, num_steps)
    counts = np.arange(num_steps + 3)
    runtime = jax.jit(jax.vmap(lambda c, lr, n: optim.schedule_value(cfg, c, lr, n), in_axes=(0, None, None)))
    np.testing.assert_allclose(runtime(counts, 0.3, num_steps), [float(static(c)) for c in counts],
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name", ["adam", "adamw", "momentum"])
def test_rate_and_length_live_in_the_state_not_the_program(name):
    """Two optimizers that differ only in learning rate and steps run through one update function: the one
    built first, fed the other's state, gives the other's updates (what lets train_subtrees compile once)."""
    t = tree()
    cfg = common.optim_config(name=name, lr=0.1, weight_decay=1e-2, lr_mults=[("head/.*", 3.0)])
    first = optim.build(cfg, t, num_steps=10)
    other = optim.build(optim.override(cfg, lr=0.02), t, num_steps=50)
    assert optim.program_key(cfg) == optim.program_key(optim.override(cfg, lr=0.02))
    s_first, s_other = first.init(t), other.init(t)
    for _ in range(3):
        u_other, s_other_next = other.update(grads_like(t), s_other, t)
        u_first, s_first_next = first.update(grads_like(t), s_other, t)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_first, u_other)
        s_other = s_other_next
    kernels = lambda tree: jax.tree.map(lambda x: x.ndim > 1, tree)  # decay on kernels only (optim._base)
    # ... and that rate is the configured one: the update is the optax optimizer's at that rate and schedule.
    ref = {"adam": optax.adam, "adamw": lambda lr: optax.adamw(lr, weight_decay=1e-2),
           "momentum": lambda lr: optax.chain(optax.add_decayed_weights(1e-2, mask=kernels),
                                              optax.sgd(lr, momentum=0.9))}[name](optim.schedule(cfg, 10))
    head = t["head"]
    ours = optim.build(optim.override(cfg, lr_mults=[]), head, num_steps=10)
    u_ours, _ = ours.update(grads_like(head), ours.init(head), head)
    u_ref, _ = ref.update(grads_like(head), ref.init(head), head)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u_ours, u_ref)


def assert_same_state(ours, theirs):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


@pytest.mark.parametrize("fields", [dict(), dict(name="adamw", weight_decay=1e-4, grad_clip_norm=1.0),
                                    dict(name="momentum", schedule="step", warmup_steps=3)])
def test_a_frozen_tree_and_its_trained_subtree_share_one_state_program(fields):
    """The state of a tree with frozen subtrees is `build(...).init`'s, and it comes from the program that
    makes the state of the trained subtree alone (a sweep over a patch, then the retrain of the whole model),
    as does the state of the same leaves under other names."""
    params = tree()
    frozen = optim.override(common.optim_config(lr_mults=[("head/.*", 2.0), (".*", 0.0)]), lr=0.01, **fields)
    head = {"head": params["head"]}
    alone = optim.override(frozen, lr_mults=[], default_mult=2.0, lr=0.3)
    assert_same_state(optim.initial_state(alone, head, 11), optim.build(alone, head, 11).init(head))
    programs = len(optim._INIT_PROGRAMS)
    assert_same_state(optim.initial_state(frozen, params, 5), optim.build(frozen, params, 5).init(params))
    renamed = {"shared": {"task0": params["head"]}}   # the same leaves under other names
    assert_same_state(optim.initial_state(alone, renamed, 3), optim.build(alone, renamed, 3).init(renamed))
    assert len(optim._INIT_PROGRAMS) == programs
    nothing = optim.override(frozen, lr_mults=[], default_mult=0.0)   # every leaf frozen: a count, no moments
    assert_same_state(optim.initial_state(nothing, params, 5), optim.build(nothing, params, 5).init(params))


def test_a_state_the_trained_leaves_do_not_fill_is_made_on_the_whole_tree(monkeypatch):
    """Should an optimizer's state ever not be the trained leaves' state in order, the whole tree's program
    makes it (the layout check's other branch)."""
    params, cfg = tree(), common.optim_config(lr_mults=[("head/.*", 1.0), (".*", 0.0)])
    real = optim._STATE_LAYOUTS.get
    monkeypatch.setattr(optim._STATE_LAYOUTS, "get", lambda key, build: (real(key, build)[0], False))
    assert_same_state(optim.initial_state(cfg, params, 5), optim.build(cfg, params, 5).init(params))


@pytest.mark.parametrize("fields", [dict(), dict(name="adamw", weight_decay=1e-4, grad_clip_norm=1.0),
                                    dict(name="momentum", schedule="step", warmup_steps=3)])
def test_initial_state_equals_init_and_compiles_once_per_program(fields):
    """`optim.initial_state` is `build(...).init` (same tree, dtypes and values), and a second rate and step
    count reuse its compiled program: they are arguments, not constants."""
    params = tree()
    cfg = optim.override(common.optim_config(lr_mults=[(".*kernel", 0.5)]), lr=0.0123, **fields)
    ours = optim.initial_state(cfg, params, 77)
    theirs = optim.build(cfg, params, 77).init(params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
    before = len(optim._INIT_PROGRAMS)
    other = optim.initial_state(optim.override(cfg, lr=0.5), params, 9)
    assert len(optim._INIT_PROGRAMS) == before
    assert next(reversed(optim._INIT_PROGRAMS._entries.values()))._cache_size() == 1   # one executable
    for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(optim.build(optim.override(cfg, lr=0.5), params, 9)
                                                           .init(params))):
        assert np.array_equal(a, b)
