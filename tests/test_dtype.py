"""config.model.dtype=bfloat16: activations and matmuls in bfloat16; parameters, optimizer state, BatchNorm
statistics, logits and the loss in float32 (mixed precision as big_vision and scenic do it)."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import losses, models, optim, params as P, train

SHAPE = (8, 16, 16, 3)
TINY = {
    "resnet": dict(depth=8, width=4),
    "mobilenet_v2": dict(width=4, expansion=2, split="final"),   # depthwise convolutions
    "isometric": dict(depth=2, width=8, num_templates=2, out_dim=8, split="blocks"),   # template mixtures
    "vit": dict(depth=1, width=16, patch=4, heads=2, split="final"),
}


def model_for(name, dtype):
    return models.build(common.model_config(name, dtype=dtype, **TINY[name]), 5)


def loss_and_activations(model):
    """classification loss whose metrics carry the forward pass's named activations, to inspect in a step."""
    def loss_fn(params, model_state, batch, rng):
        logits, out, new_state = models.apply(model, {"params": params, **model_state}, batch["image"], mode="train")
        return losses.cross_entropy(logits, batch["label"]), (new_state, {"out": out})
    return loss_fn


def dtypes(tree):
    return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def _value(path, shape, rng):
    name = path.rsplit("/", 1)[-1]
    if name in ("scale", "var"):
        return np.ones(shape, np.float32)
    if name == "mean" or name == "bias" or len(shape) < 2:
        return np.zeros(shape, np.float32)
    return (rng.normal(size=shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)


def _step_inputs(model, shapes_only=False):
    """(train state, optimizer, batch); with shapes_only the state is shapes and dtypes (nothing compiles)."""
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=SHAPE).astype(np.float32), "label": rng.integers(0, 5, SHAPE[0])}
    variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1,) + SHAPE[1:]))
    if not shapes_only:   # He-scaled kernels, unit BN (a jitted init compiles for ~10 s on CPU)
        variables = P.unflatten({p: _value(p, v.shape, rng) for p, v in P.flatten(variables).items()})
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optim.build(common.optim_config(name="momentum", lr=0.1), params, num_steps=10)
    create = lambda p, s: train.TrainState.create(p, s, tx)
    state = jax.eval_shape(create, params, model_state) if shapes_only else create(params, model_state)
    return state, tx, batch


@pytest.mark.parametrize("name", sorted(TINY))
def test_bfloat16_step_keeps_float32_state_and_computes_in_bfloat16(name):
    """What the step computes, from its trace and lowering alone (no compile): dtypes and the ops' types."""
    low = model_for(name, "bfloat16")
    state, tx, batch = _step_inputs(model_for(name, "float32"), shapes_only=True)   # the same tree either way
    step = train.make_train_step(loss_and_activations(low), tx)
    new, metrics = jax.eval_shape(step, state, batch, jax.random.key(1))
    # Parameters, optimizer state and BatchNorm statistics stay float32; the loss and logits are float32.
    assert dtypes(new.params) == dtypes(new.opt_state) == {"float32"}
    assert dtypes(new.model_state) <= {"float32"}
    assert metrics["loss"].dtype == jnp.float32 and metrics["out"]["logits"].dtype == jnp.float32
    # Every named activation before the logits is bfloat16.
    acts = {k: str(v.dtype) for k, v in metrics["out"].items() if k != "logits"}
    assert acts and set(acts.values()) == {"bfloat16"}, acts
    # Convolutions and matmuls take bfloat16 operands (the classifier's too), forward and backward.
    text = jax.jit(step).trace(state, batch, jax.random.key(1)).lower().as_text()
    ops = re.findall(r"stablehlo\.(?:convolution|dot_general)[^\n]*", text)
    assert ops and all(re.search(r"\(tensor<[^>]*bf16>, tensor<[^>]*bf16>\)", op) for op in ops), \
        [op for op in ops if "bf16" not in op][:2]


def test_bfloat16_loss_is_close_to_float32():
    """The loss a step differentiates (its forward pass, BN on batch statistics) at the same parameters."""
    state, _, batch = _step_inputs(model_for("resnet", "float32"))
    by_dtype = {}
    for dtype in ("float32", "bfloat16"):
        loss_fn = jax.jit(loss_and_activations(model_for("resnet", dtype)))
        loss, (new_state, _) = loss_fn(state.params, state.model_state, batch, None)
        assert loss.dtype == jnp.float32 and dtypes(new_state) == {"float32"}
        by_dtype[dtype] = float(loss)
    assert by_dtype["float32"] > 0.5
    np.testing.assert_allclose(by_dtype["bfloat16"], by_dtype["float32"], rtol=0.02)
