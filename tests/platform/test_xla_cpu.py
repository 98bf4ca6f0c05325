"""The library's XLA:CPU options: applied on CPU when this jaxlib knows them, never over the user's XLA_FLAGS."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.platform import xla_cpu


@pytest.fixture
def fresh_options():
    xla_cpu.enable()
    yield
    xla_cpu.enable(False)


def test_off_by_default():
    assert xla_cpu.compiler_options() == {}


def _conv_program(jit):
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    fn = jit(conv)
    return fn, (x, w), fn.lower(x, w).compile().as_text()


def test_jit_keeps_results_and_moves_convolutions_off_ynnpack(fresh_options):
    options = xla_cpu.compiler_options()
    if not options:
        pytest.skip("this jaxlib has no YNNPACK fusion option")
    assert options == xla_cpu.PREFERRED
    ours, args, text = _conv_program(xla_cpu.jit)
    theirs, _, _ = _conv_program(jax.jit)
    assert "__ynn_fusion" not in text and "convolution(" in text
    np.testing.assert_allclose(ours(*args), theirs(*args), rtol=1e-6)


def test_user_xla_flags_win(fresh_options, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{xla_cpu.YNN_FUSION_TYPE}=")
    assert xla_cpu.compiler_options() == {}
    assert float(xla_cpu.jit(lambda x: x + 1.0)(1.0)) == 2.0
