"""The fusion boundary is an exact identity (value and gradient) that survives XLA:CPU's compiler when
turned on, and is absent from the library's default programs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import settings
from modular.models import layers, resnet
from modular.platform import fusion


@pytest.fixture(autouse=True)
def boundaries_on():
    with fusion.scoped(True):
        yield


def test_boundary_is_identity_in_value_and_gradient():
    x = jax.random.normal(jax.random.key(0), (3, 4, 4, 5))
    f = jax.jit(lambda v: fusion.fusion_boundary(v * 2.0) + 1.0)
    np.testing.assert_array_equal(f(x), x * 2.0 + 1.0)
    g = jax.grad(lambda v: jnp.sum(jnp.sin(fusion.fusion_boundary(v)) ** 2))(x)
    np.testing.assert_allclose(g, jax.grad(lambda v: jnp.sum(jnp.sin(v) ** 2))(x), rtol=1e-6)
    nan_first = x.at[0, 0, 0, 0].set(jnp.nan)  # takes the other branch of the cond
    np.testing.assert_array_equal(jax.jit(fusion.fusion_boundary)(nan_first), nan_first)
    assert fusion.fusion_boundary(jnp.zeros((0, 3))).shape == (0, 3)
    np.testing.assert_array_equal(jax.vmap(fusion.fusion_boundary)(x), x)


def test_an_eager_boundary_returns_its_input_untouched():
    # outside jit (a model's init) there is no fusion to prevent; a cond run eagerly compiled a program per call
    x = jnp.ones((2, 3))
    assert fusion.fusion_boundary(x) is x


def test_boundary_survives_cpu_compilation_unless_disabled():
    def compiled_text():
        fn = jax.jit(jax.grad(lambda v: jnp.sum(jax.nn.relu(fusion.fusion_boundary(v * 3.0) + v) ** 2)))
        return fn.lower(jnp.ones((2, 8))).compile().as_text()

    assert "conditional" in compiled_text()  # folded away, it would stop XLA:CPU from nothing
    with fusion.disabled():
        assert "conditional" not in compiled_text()


def test_boundaries_are_off_by_default():
    with fusion.scoped(settings.Settings().fusion_boundaries):  # the library default, not this module's fixture
        assert not fusion.is_enabled()
        x = jnp.ones((2, 8))
        assert "conditional" not in jax.jit(fusion.fusion_boundary).lower(x).compile().as_text()


@pytest.mark.parametrize("block, expected", [
    (lambda: resnet.BasicBlock(8), 2),     # bn1-ReLU (feeds conv2) and the block output
    (lambda: resnet.PreActBlock(8), 3),    # both pre-activations and the block output
    (lambda: layers.ConvBN(8), 1),         # a normalised stem output feeds the first block's convs
    (lambda: layers.ConvBN(8, norm=False, act=None), 0),  # nothing to recompute: no boundary
])
def test_every_normalised_conv_input_is_materialised(block, expected):
    # Each activation that feeds a convolution and is an elementwise function of a BN goes through a
    # boundary, so weight-gradient transposes read it instead of recomputing the BN.
    module, x = block(), jnp.ones((2, 8, 8, 8))
    variables = module.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v: module.apply(v, x, train=True, mutable=["batch_stats"]))(variables)
    assert str(jaxpr).count("custom_vjp_call") == expected
