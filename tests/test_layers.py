"""Fast layer formulations must compute exactly what the reference layers compute."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.models import depthwise, layers


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_depthwise_conv_equals_grouped_conv(stride, size):
    x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
    ours = layers.DepthwiseConv(6, 3, stride)
    ref = nn.Conv(6, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), feature_group_count=6, use_bias=False)
    params = ours.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))
    np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) ** 2), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: jnp.sum(ref.apply(p, x) ** 2), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_conv_factory_routes_depthwise_only():
    assert isinstance(layers.conv(8, 3, groups=8, name="dw"), layers.DepthwiseConv)
    assert isinstance(layers.conv(8, 3, name="c"), nn.Conv)
    with pytest.raises(ValueError, match="keeps its channels"):
        layers.DepthwiseConv(4).init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))


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
    with pytest.raises(ValueError, match="depthwise kernel"):
        depthwise.depthwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 4)))
