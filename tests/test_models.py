"""Models: shapes, named activations, the extractor/head split, head swapping and BatchNorm modes."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from modular import models

NUM_CLASSES = 5
SHAPE = (4, 16, 16, 1)
TINY = {
    "resnet": dict(name="resnet", depth=8, width=4),
    "wrn": dict(name="wrn", depth=10, width=4, widen=2),
    "mobilenet_v2": dict(name="mobilenet_v2", width=4),
}
# A split that leaves real layers (and BatchNorm) in the head.
MID_SPLIT = {"resnet": "stage2", "wrn": "stage2", "mobilenet_v2": "stage3"}
INNER = {"resnet": "conv1", "wrn": "conv1", "mobilenet_v2": "dw_conv"}


def cfg_for(name, **overrides):
    cfg = models.default_config(name)
    cfg.update({**TINY[name], **overrides})
    return cfg


def flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(model, shape=SHAPE):
    return jax.eval_shape(lambda: models.init(model, jax.random.key(0), shape))


def images(seed=0):
    return jax.random.normal(jax.random.key(seed), SHAPE)


@pytest.fixture(scope="module", params=sorted(TINY))
def built(request):
    """One initialised tiny model per architecture (jitted init compiles take seconds on CPU)."""
    cfg = cfg_for(request.param, split=MID_SPLIT[request.param])
    model = models.build(cfg, NUM_CLASSES)
    return request.param, cfg, model, models.init(model, jax.random.key(0), SHAPE)


def test_shapes_and_named_activations(built):
    name, _, model, variables = built
    logits, out, state = models.apply(model, variables, images())
    assert logits.shape == (SHAPE[0], NUM_CLASSES) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
    keys = list(out)
    assert keys[0] == "stem" and keys[-1] == "logits"
    assert keys.index("features") < keys.index("pre_logits_map") < keys.index("pre_logits")
    np.testing.assert_array_equal(out["logits"], logits)
    assert out["pre_logits"].ndim == 2
    # Every block of every stage reports its output and an inner activation.
    blocks = {m.group(0) for p in flat(variables["params"]) if (m := re.search(r"stage\d+/block\d+", p))}
    assert blocks
    for block in blocks:
        assert block in out and f"{block}/{INNER[name]}" in out, block
    assert set(state) == {"batch_stats"}


def test_param_tree_splits_into_extractor_and_head(built):
    name, _, model, variables = built
    assert set(variables["params"]) == {"extractor", "head"}
    assert set(variables["batch_stats"]) == {"extractor", "head"}
    paths = list(flat(variables["params"]))
    assert "extractor/stem/conv/kernel" in paths and "head/classifier/kernel" in paths
    assert "extractor/stage1/block0/conv1/kernel" in paths or name == "mobilenet_v2"
    bn = [p for p in paths if re.fullmatch(r".*/bn[^/]*/(scale|bias)", p)]
    assert bn and all(p.rsplit("/", 2)[-2].startswith("bn") for p in paths if p.endswith("/scale"))
    if name == "mobilenet_v2":
        dw = [v for p, v in flat(variables["params"]).items() if re.fullmatch(r".*/dw_conv/kernel", p)]
        assert len(dw) == 8 and all(k.shape[:3] == (3, 3, 1) for k in dw)
    if name == "resnet":
        assert "extractor/stage2/block0/shortcut_conv/kernel" in paths


@pytest.mark.parametrize("name", sorted(TINY))
def test_split_point_moves_units(name):
    last = models.build(cfg_for(name), NUM_CLASSES)
    mid = models.build(cfg_for(name, split=MID_SPLIT[name]), NUM_CLASSES)
    p_last, p_mid = shapes(last)["params"], shapes(mid)["params"]
    assert count(p_last) == count(p_mid)
    assert count(p_mid["extractor"]) < count(p_last["extractor"])
    assert set(p_last) == set(p_mid) == {"extractor", "head"}
    assert set(p_last["head"]) == {"classifier"}  # default split: a linear head
    moved = set(p_mid["head"]) - {"classifier"}
    assert moved and not moved & set(p_mid["extractor"])
    units = models.unit_names(cfg_for(name))
    assert moved == set(units[units.index(MID_SPLIT[name]) + 1:])
    # The same names whatever the split: a unit's subtree is identical in both models.
    for unit in moved:
        assert jax.tree.map(lambda a: a.shape, p_mid["head"][unit]) == \
            jax.tree.map(lambda a: a.shape, p_last["extractor"][unit])


def test_swapped_head_composes(built):
    _, cfg, model, a = built
    b = models.init(model, jax.random.key(2), SHAPE)
    swapped = {col: {**b[col], "head": a[col]["head"]} for col in ("params", "batch_stats")}
    x = images()
    logits, out, _ = models.apply(model, swapped, x)
    feats, _, _ = models.apply(model, b, x, method="extract")
    head = models.build_head(cfg, NUM_CLASSES)
    expected, _, _ = models.apply(head, {col: a[col]["head"] for col in ("params", "batch_stats")}, feats)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["features"], feats, rtol=1e-6)
    assert not np.allclose(logits, models.apply(model, b, x)[0])
    # An auxiliary head (e.g. 4-way rotation) fits the same features.
    aux = models.build_head(cfg, 4)
    aux_logits, _ = jax.eval_shape(lambda f: aux.init_with_output(jax.random.key(3), f)[0], feats)
    assert aux_logits.shape == (SHAPE[0], 4)


def test_batchnorm_modes(built):
    _, _, model, variables = built
    x = images(1)
    eval_logits, _, eval_state = models.apply(model, variables, x, mode="eval")
    bs_logits, _, bs_state = models.apply(model, variables, x, mode="batch_stats")
    train_logits, _, train_state = models.apply(model, variables, x, mode="train")
    assert not np.allclose(eval_logits, bs_logits)
    np.testing.assert_allclose(bs_logits, train_logits, rtol=1e-5, atol=1e-5)
    same = jax.tree.map(np.array_equal, bs_state, {"batch_stats": variables["batch_stats"]})
    assert all(jax.tree.leaves(same)) and all(jax.tree.leaves(
        jax.tree.map(np.array_equal, eval_state, {"batch_stats": variables["batch_stats"]})))
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), train_state["batch_stats"],
                           variables["batch_stats"])
    assert jax.tree.structure(train_state["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
    assert all(jax.tree.leaves(changed))


def test_known_parameter_counts():
    resnet20 = count(shapes(models.build(models.default_config("resnet"), 10), (1, 32, 32, 3))["params"])
    assert 0.26e6 < resnet20 < 0.28e6, resnet20   # the CIFAR figure: 0.27M
    wrn16_4 = count(shapes(models.build(models.default_config("wrn"), 10), (1, 32, 32, 3))["params"])
    assert 2.6e6 < wrn16_4 < 2.8e6, wrn16_4       # WRN-16-4: 2.7M
    resnet56 = models.default_config("resnet")
    resnet56.depth = 56
    assert 0.84e6 < count(shapes(models.build(resnet56, 10), (1, 32, 32, 3))["params"]) < 0.88e6  # 0.85M


def test_low_precision_compute_keeps_float32_logits():
    model = models.build(cfg_for("resnet", dtype="bfloat16"), NUM_CLASSES)
    variables = shapes(model)
    logits, out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(SHAPE)), variables)
    assert logits.dtype == jnp.float32 and out["features"].dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("bad, message", [
    (dict(name="vgg"), r"Unknown model name 'vgg'; known names are: isometric, mobilenet_v2, mobilenet_v2_imagenet, resnet, resnet_imagenet, vit, wrn\."),
    (dict(name="resnet", depth=21), r"resnet depth must be 6n\+2"),
    (dict(name="wrn", depth=20), r"wrn depth must be 6n\+4"),
    (dict(name="resnet", split="stage4"), r"Split 'stage4' is not a unit of resnet; choose one of: stem, "),
    (dict(name="resnet", widht=8), r"Unknown model config key\(s\) widht"),
    (dict(name="resnet", dtype="float33"), r"not a dtype name"),
    (dict(name="vit", width=10, heads=4), r"ViT width 10 must be divisible by its number of heads 4\."),
    (dict(name="vit", depth=0), r"Model config depth must be a positive integer"),
    (dict(name="vit", depth=2, split="block3"), r"Split 'block3' is not a unit of vit; choose one of: embed, block1, block2, final"),
])
def test_bad_configs_fail_with_one_sentence(bad, message):
    with pytest.raises(ValueError, match=message):
        models.build({**models.default_config("resnet").to_dict(), **bad}, NUM_CLASSES)


def test_bad_mode_and_classes(built):
    _, cfg, model, variables = built
    with pytest.raises(ValueError, match="Unknown apply mode 'test'"):
        models.apply(model, variables, images(), mode="test")
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.build(cfg, 0)
    with pytest.raises(ValueError, match="Unknown model name"):
        models.default_config("nope")


def test_jitted_train_step_gives_gradients_to_both_subtrees(built):
    name, _, model, variables = built
    if name != "resnet":
        pytest.skip("one architecture suffices; compiles are slow on CPU")

    @jax.jit
    def loss_and_grads(params, state, x):
        def loss(p):
            logits, _, new_state = models.apply(model, {"params": p, **state}, x, mode="train")
            return jnp.mean(logits ** 2), new_state
        return jax.value_and_grad(loss, has_aux=True)(params)

    state = {k: v for k, v in variables.items() if k != "params"}
    (value, new_state), grads = loss_and_grads(variables["params"], state, images())
    assert np.isfinite(value) and set(new_state) == {"batch_stats"}
    for part in ("extractor", "head"):
        assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads[part]))


def test_vit_reports_every_blocks_branches_and_splits_like_the_others():
    cfg = models.default_config("vit")
    cfg.update(width=8, depth=2, heads=2, split="block1")
    model = models.build(cfg, NUM_CLASSES)
    variables = models.init(model, jax.random.key(0), SHAPE)
    assert set(variables) == {"params"}                                  # no BatchNorm state to carry
    assert set(variables["params"]["head"]) == {"block2", "final", "classifier"}
    logits, out, state = models.apply(model, variables, jnp.ones(SHAPE), mode="train")
    assert logits.shape == (SHAPE[0], NUM_CLASSES) and state == {}
    for block in ("block1", "block2"):
        for branch in ("pre_attention", "attention", "mlp"):
            assert out[f"{block}/{branch}"].shape == (SHAPE[0], 16, 8)   # 16 tokens of 4x4 patches
    np.testing.assert_allclose(out["block2"], out["block1"] + out["block2/attention"] + out["block2/mlp"],
                               rtol=1e-5, atol=1e-5)                     # residual branches as named
    with pytest.raises(ValueError, match="patch size 4 must divide"):
        models.init(model, jax.random.key(0), (1, 10, 10, 1))


def test_class_token_vit_trains_on_the_sharded_data_mesh():
    """The class token is concatenated to batch-sharded patch tokens: under train.fit's explicitly sharded mesh
    a replicated broadcast of it was a ShardingTypeError ("All operands should have the same sharding")."""
    from configs import common
    from modular import optim, supervised, train
    model = models.build(common.model_config("vit", width=16, depth=1, heads=2, patch=4, pool="tok", split="final"), 10)
    params, state = models.split_variables(models.init(model, jax.random.key(0), (1, 8, 8, 1)))
    tx = optim.build(common.optim_config(), params, 2)
    batch = {"image": np.ones((4, 8, 8, 1), np.float32), "label": np.zeros((4,), np.int32)}
    result = train.fit(state=train.TrainState.create(params, state, tx), loss_fn=supervised.classification_loss(model),
                       tx=tx, batch_fn=lambda step: batch, num_steps=2, verbose=False)
    assert np.isfinite(result.history[-1]["loss"])
