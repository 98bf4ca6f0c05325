"""The shared training loop: convergence, resume equals uninterrupted, NaN stops safely, bad checkpoints."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from modular import checkpoint, optim, train

W_TRUE = np.array([[1.0], [-2.0], [0.5]], np.float32)


def batch_fn(step, crash_at=None, nan_at=None):
    if crash_at is not None and step == crash_at:
        raise KeyboardInterrupt("simulated kill")
    rng = np.random.default_rng(step)
    x = rng.normal(size=(8, 3)).astype(np.float32)
    y = x @ W_TRUE
    if nan_at is not None and step >= nan_at:
        y = y * np.nan
    return {"x": x, "y": y.astype(np.float32)}


def loss_fn(params, model_state, batch, rng):
    pred = batch["x"] @ params["w"] + params["b"]
    loss = jnp.mean((pred - batch["y"]) ** 2)
    return loss, (model_state, {"mse": loss})


def new_state(lr=0.05):
    params = {"w": jnp.zeros((3, 1)), "b": jnp.zeros((1,))}
    tx = optim.build(common.optim_config(name="adam", lr=lr, schedule="constant"), params, 100)
    return train.TrainState.create(params, {}, tx), tx


def run(workdir=None, num_steps=60, **kw):
    state, tx = new_state()
    bf = lambda s: batch_fn(s, **kw)
    return train.fit(state=state, loss_fn=loss_fn, tx=tx, batch_fn=bf, num_steps=num_steps, workdir=workdir,
                     checkpoint_every=10, log_every=10, verbose=False)


def test_fit_converges_and_logs(tmp_path):
    result = run(str(tmp_path))
    assert result.history[-1]["loss"] < 0.1 * result.history[0]["loss"]
    assert [h["step"] for h in result.history] == [10, 20, 30, 40, 50, 60]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
    assert int(result.state.step) == 60


def test_crash_and_resume_equals_uninterrupted(tmp_path):
    reference = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(str(tmp_path), crash_at=25)
    resumed = run(str(tmp_path))
    assert resumed.resumed_from == 20
    np.testing.assert_array_equal(np.asarray(resumed.state.params["w"]), np.asarray(reference.state.params["w"]))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    with pytest.raises(train.NonFiniteLossError, match=r"loss became nan \(grad norm nan\) by step 40; stopping. Last good checkpoint: step 30"):
        run(str(tmp_path), nan_at=33)
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"), save_every=10)
    assert mngr.latest_step() == 30
    state, _ = new_state()
    restored, step = checkpoint.restore_latest(mngr, state.as_dict())
    assert step == 30 and np.all(np.isfinite(np.asarray(restored["params"]["w"])))


def test_checkpoint_that_does_not_fit_is_one_sentence_and_untouched(tmp_path):
    run(str(tmp_path), num_steps=10)
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    params = {"w": jnp.zeros((4, 1)), "b": jnp.zeros((1,))}  # a different model in the same workdir
    tx = optax.adam(1e-3)
    state = train.TrainState.create(params, {}, tx)
    with pytest.raises(checkpoint.CheckpointError, match="is corrupt or does not fit.*left untouched"):
        train.fit(state=state, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn, num_steps=20, workdir=str(tmp_path),
                  verbose=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before


def test_a_corrupt_latest_checkpoint_names_the_intact_earlier_one(tmp_path):
    run(str(tmp_path), num_steps=20)
    latest = tmp_path / "checkpoints" / "20"
    for root, _, files in os.walk(latest):   # damage every data file of the latest step
        for f in files:
            with open(os.path.join(root, f), "wb") as out:
                out.write(b"garbage")
    state, tx = new_state()
    with pytest.raises(checkpoint.CheckpointError) as e:
        train.fit(state=state, loss_fn=loss_fn, tx=tx, batch_fn=batch_fn, num_steps=30, workdir=str(tmp_path),
                  verbose=False)
    message = str(e.value)
    assert "step 20" in message and "corrupt" in message and "intact step 10" in message
    assert f"mv {latest} {latest}.corrupt" in message and "\n" not in message


def test_frozen_leaves_get_no_gradient_and_no_update():
    params = {"w": jnp.ones((3, 1)), "b": jnp.zeros((1,))}
    cfg = common.optim_config(name="sgd", lr=0.1, schedule="constant", lr_mults=[("w", 0.0)])
    tx = optim.build(cfg, params, 10)
    step = train.make_train_step(loss_fn, tx, optim.trainable_mask(params, cfg))
    state = train.TrainState.create(params, {}, tx)
    new, metrics = jax.jit(step)(state, batch_fn(0), jax.random.key(0))
    np.testing.assert_array_equal(new.params["w"], params["w"])
    assert not np.allclose(new.params["b"], params["b"])


def test_train_subtrees_freezes_by_rules_and_reuses_its_compiled_step():
    params = {"w": np.zeros((3, 1), np.float32), "b": np.ones((1,), np.float32)}
    cfg = common.optim_config(name="adam", lr=0.05, schedule="constant")
    kw = dict(loss_fn=loss_fn, optim_cfg=cfg, batch_fn=batch_fn, num_steps=30, rules=[("w", 1.0)],
              default_mult=0.0, verbose=False)
    train._COMPILED_STEPS.clear()  # (bounded: other tests may have filled it)
    first = train.train_subtrees(params, {}, **kw)
    assert isinstance(first.params["w"], np.ndarray) and first.trainable == 3
    np.testing.assert_array_equal(first.params["b"], params["b"])     # frozen: untouched
    assert np.abs(first.params["w"]).sum() > 0.5                       # trained towards W_TRUE
    assert first.optimizer_state_size == 2 * 3                          # Adam moments for w only
    steps = len(train._COMPILED_STEPS)
    second = train.train_subtrees({"w": np.ones((3, 1), np.float32), "b": params["b"]}, {}, **kw)
    assert len(train._COMPILED_STEPS) == steps                          # same loss, rules, shapes: reused
    assert not np.array_equal(second.params["w"], first.params["w"])
    train.train_subtrees(params, {}, **dict(kw, rules=[("b", 1.0)]))
    assert len(train._COMPILED_STEPS) == steps + 1                      # other rules: another program


def test_rules_that_give_the_same_multipliers_share_one_compiled_step():
    """A program depends on each parameter's multiplier, not on how the rules spell it: training everything
    with no rules (pretraining) and with a catch-all rule (full fine-tuning) reuse one step and one optimizer
    state program, and so do every statistic updating and no statistics mask at all."""
    params = {"w": np.zeros((3, 1), np.float32), "b": np.zeros((1,), np.float32)}
    cfg = common.optim_config(name="adam", lr=0.05, schedule="constant")
    kw = dict(loss_fn=loss_fn, optim_cfg=cfg, batch_fn=batch_fn, num_steps=3, verbose=False)
    train._COMPILED_STEPS.clear()
    optim._INIT_PROGRAMS.clear()
    plain = train.train_subtrees(params, {}, **kw)
    spelled = train.train_subtrees(params, {}, rules=[(".*", 1.0), ("b", 0.0)], default_mult=0.0,
                                   update_frozen_stats=True, **kw)
    assert len(train._COMPILED_STEPS) == 1 and len(optim._INIT_PROGRAMS) == 1
    jax.tree.map(np.testing.assert_array_equal, spelled.params, plain.params)
    train.train_subtrees(params, {}, rules=[("w", 1.0)], default_mult=0.0, **kw)   # b frozen: another program
    assert len(train._COMPILED_STEPS) == 2 and len(optim._INIT_PROGRAMS) == 2
    assert optim.program_key(cfg, params) == optim.program_key(optim.override(cfg, lr_mults=[(".*", 1.0)]), params)
    assert optim.program_key(cfg, params) != optim.program_key(optim.override(cfg, default_mult=2.0), params)


def test_train_subtrees_compiles_once_for_a_grid_of_rates_and_lengths():
    """Learning rate and step count are runtime values: a grid over them reuses one compiled step, and each
    point still trains at its own rate (a larger rate moves further in the same steps)."""
    params = {"w": np.zeros((3, 1), np.float32), "b": np.zeros((1,), np.float32)}
    train._COMPILED_STEPS.clear()
    moved = {}
    for lr in (1e-3, 1e-2):
        for steps in (5, 12):
            cfg = common.optim_config(name="adam", lr=lr, schedule="cosine")
            out = train.train_subtrees(params, {}, loss_fn=loss_fn, optim_cfg=cfg, batch_fn=batch_fn,
                                       num_steps=steps, verbose=False)
            moved[lr, steps] = float(np.abs(out.params["w"]).sum())
            assert int(out.fit.state.step) == steps
    assert len(train._COMPILED_STEPS) == 1
    assert moved[1e-2, 12] > moved[1e-2, 5] > moved[1e-3, 5] > 0


def test_an_interrupt_python_cannot_raise_is_kept_quietly():
    """A Ctrl-C inside a callback Python ignores exceptions from (jax's gc callback) is not printed as a
    traceback when it is kept in the pending flag; other unraisable exceptions still reach the default hook."""
    import types
    seen = []
    hook = train._quiet_kept_interrupts(seen.append)
    interrupt = types.SimpleNamespace(exc_value=KeyboardInterrupt())
    other = types.SimpleNamespace(exc_value=ValueError("x"))
    train._PENDING_INTERRUPT.set()
    try:
        hook(interrupt)
        hook(other)
    finally:
        train._PENDING_INTERRUPT.clear()
    hook(interrupt)   # not kept: printed as before
    assert seen == [other, interrupt]
    assert train._quiet_kept_interrupts(hook) is hook
