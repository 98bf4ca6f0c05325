"""Model patches: patch rules, frozen parts stay put, patch files, the one-program learning-rate sweep.
Multi-task and multi-resolution patches: test_patches_multitask.py; their rows' rate choice:
test_patches_rate_choice.py; the experiment's smoke run: test_patches_smoke.py."""
import jax
import ml_collections
import numpy as np
import pytest

from modular import checkpoint, models, optim, params as P, protocol
from modular.methods import patches
from patches_helpers import CFG, OPTIM, mode_optim, tiny_source


@pytest.fixture(scope="module")
def tiny():
    return tiny_source()


def test_rules_select_the_paper_patches(tiny):
    _, source = tiny
    params = source.variables["params"]
    for mode, expected in (("last_layer", {"head"}), ("sb_only", {"scale", "bias"})):
        trained = [p for p, m in P.flatten(optim.trainable_mask(params, mode_optim(mode))).items() if m]
        assert trained and all(p.startswith("head/") if "head" in expected else p.split("/")[-1] in expected
                               for p in trained)
    dw = [p for p, m in P.flatten(optim.trainable_mask(params, mode_optim("dw_last"))).items() if m]
    assert {p for p in dw if not p.startswith("head/")} == {p for p in P.paths(params) if p.endswith("dw_conv/kernel")}
    full = optim.trainable_mask(params, mode_optim("full"))
    assert all(jax.tree.leaves(full))


def test_unknown_mode_and_dw_on_resnet_fail_clearly():
    with pytest.raises(ValueError, match="Unknown transfer mode"):
        patches.lr_rules("sb_plus")
    resnet = models.init(models.build(ml_collections.ConfigDict(dict(name="resnet", depth=8, width=4)), 3),
                         jax.random.key(0), (1, 8, 8, 1))
    with pytest.raises(ValueError, match="depthwise"):
        patches.check_applicable(resnet["params"], "dw_last")


@pytest.mark.parametrize("mode", ["sb_last", "last_layer", "dw_last_frozen_stats", "dw_last", "last_layer_bn_stats"])
def test_transfer_trains_only_the_patch_and_file_roundtrips(tiny, mode, tmp_path):
    ds, source = tiny
    clf, n = patches.transfer(source, ds, mode, model_cfg=CFG, optim_cfg=OPTIM, num_steps=3, batch_size=16,
                              verbose=False)
    before, after = P.flatten(source.variables["params"]), P.flatten(clf.variables["params"])
    start_head = P.flatten(patches.target_start(source, CFG, ds.num_classes, ds.image_shape, 0)[1]["params"])
    rules = [(r, True) for r in patches.get_mode(mode).trains]
    for path in after:
        changed = not np.array_equal(after[path], start_head[path] if path.startswith("head/") else before[path])
        assert changed == P.match_rules(path, rules, False), path
    # A mode with the task's own statistics re-estimates every BN layer's, including layers whose scale and
    # bias stay frozen (DW + last layer, last layer + statistics); the others keep the source's, all of them.
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(source.variables["batch_stats"]),
                                                        jax.tree.leaves(clf.variables["batch_stats"]))]
    assert all(changed) if patches.get_mode(mode).task_bn_stats else not any(changed)
    assert n == sum(np.size(v) for p, v in after.items() if P.match_rules(p, rules, False))
    # What a task stores: its patch and head, plus every BN statistic when it re-estimates them.
    stats = P.count(clf.variables["batch_stats"]) if patches.get_mode(mode).task_bn_stats else 0
    assert patches.stored_count(clf.variables, mode) == n + stats

    path = str(tmp_path / f"{mode}.patch")
    size = patches.export_patch(path, clf.variables, mode)
    assert 0 < size < P.nbytes(clf.variables["params"])
    rebuilt = patches.import_patch(path, source.variables, mode)
    for a, b in zip(jax.tree.leaves(rebuilt), jax.tree.leaves(clf.variables)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("model_cfg", [CFG.to_dict(), dict(name="resnet", depth=8, width=4)])
def test_sb_rule_covers_every_bn_layer(model_cfg):
    """Every BatchNorm layer (a module with statistics) has its scale and bias in the S/B patch, and the
    S/B patch holds nothing else."""
    variables = models.init(models.build(ml_collections.ConfigDict(model_cfg), 3), jax.random.key(0), (1, 8, 8, 1))
    bn_layers = {p.rsplit("/", 1)[0] for p in P.paths(variables["batch_stats"])}
    sb = {p for p in P.paths(variables["params"]) if P.match_rules(p, [(patches.modes.SB, True)], False)}
    assert bn_layers and sb == {f"{layer}/{leaf}" for layer in bn_layers for leaf in ("scale", "bias")}


def test_lr_sweep_in_one_program_equals_separate_runs(tiny):
    """Each lane of the vmapped sweep is the run train_subtrees gives at that rate (same batches, same init).
    Momentum SGD, whose steps are exact to float noise; Adam amplifies that noise on leaves whose gradient is
    zero in theory (a bias before a BN), though its update is just as linear in the rate."""
    ds, source = tiny
    fit, val = protocol.validation_split(ds, 0.25, 0)
    lrs, sgd = [1e-2, 1e-1], optim.override(OPTIM, name="momentum", schedule="cosine")
    out = patches.sweep.sweep(source, fit, val, "sb_last", lrs, model_cfg=CFG, optim_cfg=sgd, num_steps=3,
                              batch_size=16, seed=0, verbose=False)
    assert out["program"] == "vmap" and len(out["validation"]) == 2
    clf, _ = patches.transfer(source, fit, "sb_last", model_cfg=CFG, optim_cfg=optim.override(sgd, lr=lrs[1]),
                              num_steps=3, batch_size=16, seed=0, verbose=False)   # the second lane
    for a, b in zip(jax.tree.leaves(out["variables"][1]), jax.tree.leaves(clf.variables)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    slow, fast = out["variables"]
    assert not np.allclose(jax.tree.leaves(slow["params"]["head"])[-1], jax.tree.leaves(fast["params"]["head"])[-1])


@pytest.mark.unit
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("fields", [dict(), dict(name="momentum", schedule="cosine", lr_mults=[(".*bias", 0.5)])])
def test_sweep_lane_state_is_the_eager_init(fields, dtype):
    """A lane's optimizer state, made by compiled programs with the rate as an argument, is the one the
    lane's optimizer's own `init` makes: same tree, dtypes and values (the rate rounded once, to the params'
    dtype)."""
    params = {"bn": {"scale": np.ones(4, dtype), "bias": np.zeros(4, dtype)},
              "head": {"kernel": np.full((4, 3), 0.5, dtype)}}
    cfg = optim.override(OPTIM, **fields)
    for lr, num_steps in ((0.1, 7), (3e-3, 40)):
        programs = len(patches.sweep._SCALE_INIT)
        ours = patches.sweep.initial_lane_state(cfg, params, num_steps, lr)
        if num_steps == 40:   # another rate and length reuse the first's programs
            assert len(patches.sweep._SCALE_INIT) == programs
        theirs = patches.sweep.rate_in_state(cfg, params, num_steps, lr).init(params)
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)
    # another patch (another tree of the same dtype) reuses the scale-state program
    programs = len(patches.sweep._SCALE_INIT)
    other = {"bn": params["bn"]}
    ours = patches.sweep.initial_lane_state(cfg, other, 5, 0.2)
    assert len(patches.sweep._SCALE_INIT) == programs
    theirs = patches.sweep.rate_in_state(cfg, other, 5, 0.2).init(other)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        assert np.asarray(a).dtype == np.asarray(b).dtype and np.array_equal(a, b)


def test_patch_on_wrong_backbone_fails_with_one_sentence(tiny, tmp_path):
    ds, source = tiny
    path = str(tmp_path / "p.patch")
    patches.export_patch(path, source.variables, "sb_last")
    wide = models.init(models.build(ml_collections.ConfigDict(dict(CFG.to_dict(), width=8)), 10),
                       jax.random.key(0), (1, 8, 8, 1))
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):
        patches.import_patch(path, wide, "sb_last")
    with pytest.raises(checkpoint.CheckpointError, match="does not fit"):  # right backbone, wrong mode's patch
        patches.import_patch(path, source.variables, "last_layer_bn_stats")
    with pytest.raises(P.SubtreeMismatchError, match="no place"):
        patches.apply_patch(source.variables, {"params": {"head": {"extra": np.zeros(3, np.float32)}}})


def test_patches_reuse_the_loss_and_evaluation_objects_of_the_pretrained_classifier():
    """One loss object per (model, BN mode) however it is asked for, so a patch mode's compiled step is the
    pretraining step whenever the two train the same parameters (full fine-tuning); one evaluation function
    per (model, mode), so a patched model of the source's shape is evaluated by the source's program."""
    from modular import supervised
    from modular.methods.patches.transfer import eval_logits, patch_loss
    model = models.build(CFG, 10)
    source = supervised.Classifier(model=models.build(CFG, 10), variables={}, fit=None)
    assert eval_logits(model) is source.logits_fn() is supervised.model_logits(model, "eval")
    assert source.logits_fn("train") is not source.logits_fn()
    assert patch_loss(model, "full") is supervised.classification_loss(model)
    assert patch_loss(model, "sb_last") is supervised.classification_loss(model, "train")
    assert patch_loss(model, "last_layer") is supervised.classification_loss(model, bn_mode="eval")
    assert patch_loss(model, "last_layer") is not patch_loss(model, "full")
