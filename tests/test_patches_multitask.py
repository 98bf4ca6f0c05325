"""Multi-task and multi-resolution patches: mixed-task serving, the multi-task sweep, shared heads across
resolutions and the cascade."""
import jax
import numpy as np
import pytest

from modular import data, models, optim, params as P, protocol, supervised
from modular.methods import patches
from modular.methods.patches import multires, serving
from patches_helpers import OPTIM, tiny_source


@pytest.fixture(scope="module")
def tiny():
    return tiny_source()


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


def test_forward_flops_compile_once_per_shape(tiny, monkeypatch):
    """FLOPs depend on shapes alone: another seed's variables reuse the first count; another image shape is
    measured (each measurement compiles the forward pass)."""
    _, source = tiny
    measured = []
    real = multires._measure_flops
    monkeypatch.setattr(multires, "_measure_flops", lambda *a: measured.append(a[2]) or real(*a))
    multires._FLOPS.clear()
    other_seed = jax.tree.map(lambda x: x * 0.5, source.variables)
    first = multires.forward_flops(source.model, source.variables, (8, 8, 1))
    assert multires.forward_flops(source.model, other_seed, (8, 8, 1)) == first
    assert multires.forward_flops(source.model, other_seed, (12, 12, 1)) > first
    assert measured == [(8, 8, 1), (12, 12, 1)]


def test_cascade_threshold_is_the_cheapest_without_validation_loss():
    curve = [dict(threshold=0.5, accuracy=0.80, relative_cost=0.4), dict(threshold=0.9, accuracy=0.91, relative_cost=0.6),
             dict(threshold=0.99, accuracy=0.93, relative_cost=0.9), dict(threshold=1.0, accuracy=0.90, relative_cost=1.3)]
    assert multires.choose_threshold(curve, top_accuracy=0.90)["threshold"] == 0.9
    assert multires.choose_threshold(curve, top_accuracy=0.95)["threshold"] == 0.99   # none is enough: best


def test_cascade_escalates_only_unsure_examples_and_counts_every_pass():
    labels = np.array([0, 1, 1])
    cheap = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])    # sure+right, unsure+wrong, sure+right
    dear = np.array([[0.4, 0.6], [0.1, 0.9], [0.9, 0.1]])
    out = multires.cascade([cheap, dear], [1.0, 4.0], labels, threshold=0.75)
    assert out["accuracy"] == 1.0 and out["stopped_at"] == [2, 1]
    assert out["mean_cost"] == pytest.approx((1 + 5 + 1) / 3)       # the escalated one pays for both passes
    always = multires.cascade([cheap, dear], [1.0, 4.0], labels, threshold=1.01)
    assert always["relative_cost"] == pytest.approx(5 / 4) and always["accuracy"] == pytest.approx(1 / 3)
