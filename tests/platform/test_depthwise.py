"""The CPU depthwise kernel: exact gradients whatever the blocking, and only ever compiled for CPU."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import models, optim, supervised, train
from modular.platform import depthwise, fusion


@pytest.mark.parametrize("cache_bytes", [1, 3000, 1e9])  # one image per block, blocks of 2 (of 6), one block
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_kernel_gradient_is_blocking_invariant(monkeypatch, cache_bytes, stride):
    monkeypatch.setattr(depthwise, "CACHE_BYTES", cache_bytes)
    x = jax.random.normal(jax.random.key(0), (6, 5, 5, 4))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 4))

    def reference(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel[:, :, None, :], (stride, stride), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4)

    loss = lambda f: lambda x, k: jnp.sum(jnp.tanh(f(x, k)))
    ours = jax.grad(loss(lambda x, k: depthwise.depthwise_conv(x, k, stride)), argnums=(0, 1))(x, kernel)
    ref = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_images_per_block_divides_the_batch():
    assert depthwise._images_per_block(128, 1_000_000) == 2
    assert depthwise._images_per_block(6, 1_000_000_000) == 1
    assert depthwise._images_per_block(7, 10) == 7


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_tuned_models_lower_to_native_kernels_off_cpu(platform):
    # With every CPU setting on, an accelerator still compiles XLA's grouped convolution and no loop.
    model = models.build(models.default_config("mobilenet_v2"), 10)
    variables = models.init(model, jax.random.key(0), (1, 16, 16, 3))
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optim.build(common.optim_config(), params, 10)
    batch = {"image": jnp.zeros((4, 16, 16, 3)), "label": jnp.zeros((4,), jnp.int32)}
    step = train.make_train_step(supervised.classification_loss(model), tx)
    args = (train.TrainState.create(params, state, tx), batch, jax.random.key(0))

    def lowered(target):
        return jax.jit(step).trace(*args).lower(lowering_platforms=(target,)).as_text()

    with fusion.scoped(True):
        depthwise.enable()
        try:
            cpu, accel = lowered("cpu"), lowered(platform)
        finally:
            depthwise.enable(False)
    assert "stablehlo.while" in cpu                        # the blocked kernel gradient, on CPU only
    assert "stablehlo.while" not in accel and "feature_group_count" in accel
    # (fusion boundaries lower to `case`s on a constant platform index, which the compiler folds away)
