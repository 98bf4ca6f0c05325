"""Model patches: patch rules, frozen parts stay put, patch files, multi-task and mixed-task serving."""
import dataclasses
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from modular import checkpoint, data, models, optim, params as P, protocol, supervised
from modular.methods import patches
from modular.methods.patches import multires, serving

CFG = ml_collections.ConfigDict(dict(name="mobilenet_v2", width=4, expansion=2, split="final"))
OPTIM = ml_collections.ConfigDict(dict(name="adam", lr=1e-2, schedule="constant", lr_mults=[], default_mult=1.0))


def mode_optim(mode):
    return optim.override(OPTIM, lr_mults=patches.lr_rules(mode), default_mult=0.0)


@pytest.fixture(scope="module")
def tiny():
    ds = data.load("digits", image_size=8, max_train=64)
    model = models.build(CFG, ds.num_classes)
    variables = jax.tree.map(np.asarray, models.init(model, jax.random.key(0), (1, 8, 8, 1)))
    return ds, supervised.Classifier(model, variables, None)


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


def test_cascade_threshold_is_the_cheapest_without_validation_loss():
    curve = [dict(threshold=0.5, accuracy=0.80, relative_cost=0.4), dict(threshold=0.9, accuracy=0.91, relative_cost=0.6),
             dict(threshold=0.99, accuracy=0.93, relative_cost=0.9), dict(threshold=1.0, accuracy=0.90, relative_cost=1.3)]
    assert multires.choose_threshold(curve, top_accuracy=0.90)["threshold"] == 0.9
    assert multires.choose_threshold(curve, top_accuracy=0.95)["threshold"] == 0.99   # none is enough: best


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


def test_mixed_task_batch_matches_per_task_calls(tiny, tmp_path):
    ds, source = tiny
    tasks = [ds, data.load("mnist5k/invert", image_size=8, max_train=64)]
    params, state = patches.init_multitask(source.variables, 2, "sb")
    rng = np.random.default_rng(0)  # make the two tasks' patches (and statistics) differ, as training would
    params["tasks"]["task1"] = jax.tree.map(lambda x: x + rng.normal(0, 0.5, x.shape).astype(x.dtype),
                                            params["tasks"]["task1"])
    state["tasks"]["task1"] = jax.tree.map(lambda x: x * 1.5 + 0.1, state["tasks"]["task1"])
    assert patches.per_task_count(params) < P.count(params["shared"])
    ids = np.array([0, 1] * 5)
    images = np.stack([tasks[t].test_images[i] for i, t in enumerate(ids)])
    serve = patches.make_mixed_server(source.model, serving.shared_variables(params, state))
    mixed = np.asarray(serve(patches.stack_patches(params, state, 2), ids, images))
    ref = np.stack([np.asarray(models.apply(source.model, patches.task_variables(params, state, t), images)[0])
                    for t in (0, 1)])
    np.testing.assert_allclose(mixed, ref[ids, np.arange(10)], rtol=1e-4, atol=1e-4)
    assert not np.allclose(mixed, ref[1 - ids, np.arange(10)], atol=1e-3)
    with pytest.raises(ValueError, match="sharing"):
        patches.init_multitask(source.variables, 2, "everything")
    # Per-task BN statistics count in what a task stores; one model for all tasks stores nothing per task.
    head_bn, head_bn_state = patches.init_multitask(source.variables, 2, "head_bn_stats")
    assert patches.per_task_count(head_bn, head_bn_state) == (P.count(source.variables["params"]["head"])
                                                             + P.count(source.variables["batch_stats"]))
    none, none_state = patches.init_multitask(source.variables, 2, "none")
    assert patches.per_task_count(none, none_state) == 0 and "shared" in none_state
    assert P.count(patches.task_variables(none, none_state, 1)) == P.count(source.variables)

    # The same two tasks as bank files (each task's S/B patch on the source backbone), served in one call.
    paths = [str(tmp_path / f"task{t}.patch") for t in (0, 1)]
    classifiers = [supervised.Classifier(source.model, patches.task_variables(params, state, t), None) for t in (0, 1)]
    for path, clf in zip(paths, classifiers):
        patches.export_patch(path, clf.variables, "sb_last")
    served = patches.serve_mixed(source, paths, classifiers, tasks, examples_per_task=5)
    assert served["batch"] == 10 and served["backbone_frozen_in_every_patch"]
    assert served["max_abs_diff_vs_per_task_calls"] < 1e-4 and served["patch_params"] == patches.per_task_count(params)


def test_cascade_escalates_only_unsure_examples_and_counts_every_pass():
    labels = np.array([0, 1, 1])
    cheap = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])    # sure+right, unsure+wrong, sure+right
    dear = np.array([[0.4, 0.6], [0.1, 0.9], [0.9, 0.1]])
    out = multires.cascade([cheap, dear], [1.0, 4.0], labels, threshold=0.75)
    assert out["accuracy"] == 1.0 and out["stopped_at"] == [2, 1]
    assert out["mean_cost"] == pytest.approx((1 + 5 + 1) / 3)       # the escalated one pays for both passes
    always = multires.cascade([cheap, dear], [1.0, 4.0], labels, threshold=1.01)
    assert always["relative_cost"] == pytest.approx(5 / 4) and always["accuracy"] == pytest.approx(1 / 3)


def test_multires_shares_the_head_and_costs_grow_with_resolution(tiny):
    _, source = tiny
    params, state = patches.init_multitask(source.variables, 2, "sb_shared_head")
    private = P.paths(params["tasks"]["task0"])
    assert private and all(p.split("/")[-1] in ("scale", "bias") for p in private)
    assert any(p.startswith("head/") for p in P.paths(params["shared"]))
    sets = [data.load("digits", image_size=r, max_train=64) for r in (8, 12)]
    out = multires.evaluate(source.model, params, state, sets, [0.5, 1.0])
    small, large = out["per_resolution"]
    assert (small["resolution"], large["resolution"]) == (8, 12) and small["flops"] < large["flops"]
    assert out["cascade"][-1]["accuracy"] == pytest.approx(large["accuracy"])   # threshold 1: all escalate
    with pytest.raises(ValueError, match="same examples"):
        multires.check_aligned([sets[0], data.load("digits", image_size=8, max_train=64, seed=1)])


def test_smoke_experiment_end_to_end(tmp_path, monkeypatch):
    from configs import patches as patches_config
    from experiments import patches as exp, run as runner
    config = patches_config.get_config("smoke")
    results = runner.run(config, str(tmp_path / "first"))
    for key in ("accuracy", "params_per_task"):
        assert set(config.transfer.modes) <= set(results[key])
    ppt = results["params_per_task"]
    assert ppt["last_layer"] < ppt["sb_last"] < ppt["sb_dw_last"] < ppt["full"]
    # Every mode received the same learning-rate grid, and chose from it.
    grid = [dict(lr=float(v)) for v in config.transfer.lrs]
    for record in results["per_seed"]:
        assert {m: [g["setting"] for g in record["grid"][m]] for m in config.transfer.modes} == \
            {m: grid for m in config.transfer.modes}
        assert all(dict(lr=record["lr"][m]) in grid for m in config.transfer.modes)
    assert results["claims"] and all(c["verdict"] == protocol.INCONCLUSIVE for c in results["claims"])  # 1 seed
    assert {"patches_transfer", "patches_multitask", "patches_multires", "patches_claims"} <= set(results["readme_tables"])

    # Test data never reaches selection: with the target's test labels shuffled, every chosen learning
    # rate and the cascade threshold stay the same (only the reported test numbers change).
    shutil.copytree(tmp_path / "first" / "pretrain", tmp_path / "second" / "pretrain")
    load = exp._load

    def shuffled_test_labels(*args, **kw):
        ds = load(*args, **kw)
        return dataclasses.replace(ds, test_labels=np.random.default_rng(0).permutation(ds.test_labels))

    monkeypatch.setattr(exp, "_load", shuffled_test_labels)
    config.multitask.enabled = False
    config.transfer.modes = ["sb_last"]
    config.resume_changed = True   # the copied backbone checkpoints come without a config record: reuse them knowingly
    shuffled = runner.run(config, str(tmp_path / "second"))
    assert shuffled["chosen_lr"] == {m: results["chosen_lr"][m] for m in config.transfer.modes}
    assert [s["multires"]["chosen"]["threshold"] for s in shuffled["per_seed"]] == \
        [s["multires"]["chosen"]["threshold"] for s in results["per_seed"]]
    assert shuffled["accuracy"]["sb_last"]["mean"] != results["accuracy"]["sb_last"]["mean"]
    results = json.load(open(tmp_path / "first" / "results.json"))
    tmp_path = tmp_path / "first"
    assert all(results["patch_reload_identical"].values())
    assert "does not fit" in results["wrong_backbone_error"]
    first = results["per_seed"][0]
    assert first["multitask"]["mixed_batch_serving"]["max_abs_diff_vs_per_task_calls"] < 1e-3
    assert os.path.exists(tmp_path / "plots" / "accuracy_vs_params.png")
    assert os.path.exists(tmp_path / "plots" / "multires_cascade.png")
    costs = [r["relative_cost"] for r in first["multires"]["per_resolution"]]
    assert costs == sorted(costs) and costs[-1] == 1.0
    assert results["paper"]["claims"]


def test_target_equal_to_source_is_rejected(tmp_path):
    from configs import patches as patches_config
    from experiments import patches as exp
    config = patches_config.get_config("smoke")
    config.data.target = config.data.name
    with pytest.raises(ValueError, match="must differ"):
        exp.run(config, str(tmp_path))


def test_multitask_sweep_lane_equals_train_multitask(tiny):
    """Each rate of the multi-task sweep is the joint training train_multitask gives at that rate (same tasks,
    same batches); momentum SGD, whose update is exactly linear in the rate."""
    ds, source = tiny
    tasks = [ds, data.load("mnist5k/invert", image_size=8, max_train=64)]
    halves = [protocol.validation_split(t, 0.25, 0) for t in tasks]
    fits, vals = [f for f, _ in halves], [v for _, v in halves]
    sgd, lrs = optim.override(OPTIM, name="momentum", schedule="cosine"), [1e-2, 1e-1]
    out = patches.sweep.sweep_multitask(source.model, source.variables, fits, vals, "sb", lrs, optim_cfg=sgd,
                                        num_steps=3, batch_size=8, seed=0, sequential=True, verbose=False)
    assert len(out["validation"]) == 2 and all(len(a) == 2 for a in out["validation_per_task"])
    assert out["validation"] == [float(np.mean(a)) for a in out["validation_per_task"]]
    params, state = patches.train_multitask(source.model, source.variables, fits, "sb",
                                            optim_cfg=optim.override(sgd, lr=lrs[1]), num_steps=3, batch_size=8,
                                            seed=0, verbose=False)
    for a, b in zip(jax.tree.leaves(out["trees"][1]), jax.tree.leaves((params, state))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    slow, fast = out["trees"]
    assert not np.allclose(jax.tree.leaves(slow[0]["tasks"])[0], jax.tree.leaves(fast[0]["tasks"])[0])


def test_choose_rate_takes_the_best_validation_score_and_skips_divergence():
    lr, grid = patches.sweep.choose_rate([1e-3, 1e-2, 1e-1], [0.5, float("nan"), 0.7])
    assert lr == 1e-1 and [g["setting"]["lr"] for g in grid] == [1e-3, 1e-2, 1e-1]
    assert patches.sweep.choose_rate([1e-3, 1e-2], [0.6, 0.6])[0] == 1e-3    # ties: the earlier rate


def _shuffled_tests(sets):
    # The same permutation for sets of one size: one task's resolutions stay aligned.
    return [dataclasses.replace(s, test_labels=s.test_labels[np.random.default_rng(1).permutation(len(s.test_labels))])
            for s in sets]


def test_multitask_and_multires_rows_choose_their_rate_on_validation(tiny, tmp_path):
    """Every multi-task and multi-resolution row (baselines too) picks its rate from the grid by validation
    accuracy, and the test labels never change a choice."""
    ds, source = tiny
    lrs, common = [1e-3, 1e-1], dict(model_cfg=CFG, optim_cfg=OPTIM, num_steps=2, batch_size=8, seed=0)
    tasks = [ds, data.load("mnist5k/invert", image_size=8, max_train=64)]
    choices = []
    for i, sets in enumerate((tasks, _shuffled_tests(tasks))):
        out = patches.compare_multitask(source, sets, ["sb", "head"], independent=True, lrs=lrs, val_fraction=0.25,
                                        workdir=str(tmp_path / f"mt{i}"), log_every=100, **common)
        rows = {r["setting"]: r for r in out["table"]}
        assert set(out["grids"]) == set(rows)
        for name, row in rows.items():
            if name == "independent_full_models":
                assert len(row["lr"]) == len(tasks)
                for lr, task in zip(row["lr"], [t.name for t in sets]):
                    grid = out["grids"][name][task]
                    assert lr == patches.sweep.choose_rate(lrs, [g["validation"] for g in grid])[0]
            else:
                assert row["lr"] == patches.sweep.choose_rate(lrs, [g["validation"] for g in out["grids"][name]])[0]
        choices.append({name: row["lr"] for name, row in rows.items()})
    assert choices[0] == choices[1]

    sets = [data.load("digits", image_size=r, max_train=64) for r in (8, 12)]
    res = [multires.train_and_evaluate(source, s, [0.5, 1.0], lrs=lrs, val_fraction=0.25, baselines=True, **common)
           for s in (sets, _shuffled_tests(sets))]
    for out in res:
        rows = {r["setting"]: r for r in out["table"]}
        assert set(rows) == {"sb_patch_per_resolution", "all_shared", "independent_per_resolution"}
        assert rows["sb_patch_per_resolution"]["lr"] == patches.sweep.choose_rate(
            lrs, [g["validation"] for g in out["grids"]["sb_patch_per_resolution"]])[0]
        assert len(rows["independent_per_resolution"]["lr"]) == 2 and set(out["grids"]["independent_per_resolution"]) \
            == {"8px", "12px"}
    assert [[r["lr"] for r in out["table"]] for out in res][0] == [[r["lr"] for r in out["table"]] for out in res][1]
    assert res[0]["chosen"]["threshold"] == res[1]["chosen"]["threshold"]
