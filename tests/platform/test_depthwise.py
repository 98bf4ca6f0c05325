"""The CPU depthwise kernel: exact gradients whatever the blocking. That it is only ever compiled for CPU (an
accelerator gets XLA's grouped convolution) is checked for every model in tests/test_lowering.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.platform import depthwise


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
