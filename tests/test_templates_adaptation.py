"""Template mixtures' domain adaptation: the paper's discriminator placement (a CNN on the blocks' output)."""
import jax
import jax.numpy as jnp
import pytest

from modular.methods.templates import adaptation as A
from modular.models import isometric


def test_trunk_discriminator_is_a_cnn_on_the_maps_before_the_output_adapter():
    cfg = isometric.default_config(width=4, expansion=2, depth=2, num_templates=2, stride=4, out_dim=8)
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3])
    images = jax.random.uniform(jax.random.key(1), (5, 16, 16, 1))
    _, out, _ = jax.jit(lambda p, s, x: isometric.apply(cfg, p, s, x))(params, stats, images)
    assert out["trunk"].shape == (5, 4, 4, isometric.trunk_width(cfg)) and out["features"].shape == (5, 8)
    tree = A.add_discriminator({}, jax.random.key(2), isometric.trunk_width(cfg), hidden=6, placement="trunk")
    d = tree[A.ADVERSARY]
    assert sorted(d) == ["conv1", "conv2", "conv3"] and d["conv3"]["kernel"].shape == (3, 3, 6, 1)
    assert A.discriminator_apply(d, out["trunk"]).shape == (5,)
    # the ADDA objective on maps: a descent step helps D separate the domains and moves targets towards source
    fs = jax.random.normal(jax.random.key(3), (16, 4, 4, 4)) + 1.0
    ft = jax.random.normal(jax.random.key(4), (16, 4, 4, 4)) - 1.0
    gd, gt = jax.jit(jax.grad(lambda d, ft: A.adversarial_terms(d, fs, ft, "adda")[0], argnums=(0, 1)))(d, ft)
    d_loss = jax.jit(lambda d: A.adversarial_terms(d, fs, ft, "adda")[1]["disc_loss"])
    assert float(d_loss(jax.tree.map(lambda p, g: p - 0.05 * g, d, gd))) < float(d_loss(d))
    source_logit = jax.jit(lambda f: jnp.mean(A.discriminator_apply(d, f)))
    assert float(source_logit(ft - 0.5 * gt)) > float(source_logit(ft))
    with pytest.raises(ValueError, match="Unknown discriminator placement"):
        A.add_discriminator({}, jax.random.key(2), 4, placement="logits")
