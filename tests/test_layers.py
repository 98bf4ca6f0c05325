"""Layers compute what the reference layers compute, with and without the CPU depthwise kernel."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.models import layers
from modular.platform import depthwise


@pytest.fixture(params=[False, True], ids=["default", "cpu_kernel"])
def cpu_kernel(request):
    depthwise.enable(request.param)
    yield request.param
    depthwise.enable(False)


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_depthwise_conv_equals_grouped_conv(stride, size, cpu_kernel):
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


def test_bad_depthwise_kernel_is_one_sentence():
    from modular.models.depthwise import depthwise_conv
    with pytest.raises(ValueError, match="depthwise kernel"):
        depthwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 4)))
