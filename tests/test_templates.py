"""Template mixtures: generated weights, regularizers, signatures, freezing rules, transfer inits, adaptation,
the bank adapter, the registered isometric model. The experiment's smoke run: test_templates_smoke.py."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common, templates as templates_config
from experiments import run as run_module
from modular import data, models, optim, params as P, train
from modular.methods import patches
from modular.methods import templates as T
from modular.methods.templates import adaptation as A, multitask as M, transfer as X
from modular.models import isometric


def tiny(**kw):
    return isometric.default_config(**dict(dict(width=4, expansion=2, depth=3, num_templates=3, stride=4, out_dim=8), **kw))


def tiny_dataset(name="tiny", num_classes=3, n=24, seed=0):
    r = np.random.default_rng(seed)
    images = r.random((2 * n, 16, 16, 1), dtype=np.float32)
    labels = (np.arange(2 * n) % num_classes).astype(np.int32)
    return data.Dataset(name, images[:n], labels[:n], images[n:], labels[n:], num_classes)


def tiny_recipe(**kw):
    return T.Recipe(**dict(dict(optim_cfg=common.optim_config(lr=0.05), num_steps=2, batch_size=8, seed=0,
                                mixture_lr_mult=3.0, entropy_weight=0.01, log_every=0, verbose=False), **kw))


def trainable_paths(params, rules):
    mask = P.flatten(optim.trainable_mask(params, common.optim_config(lr_mults=rules, default_mult=0.0)))
    return sorted(k for k, v in mask.items() if v)


def changed_paths(before, after):
    before, after = P.flatten(before), P.flatten(after)
    return sorted(k for k in before if not np.array_equal(before[k], after[k]))


def test_one_hot_mixture_equals_plain_net_with_those_weights():
    """A sequential one-hot signature over K=L templates is exactly a plain net whose layers are the templates."""
    mixed_cfg, plain_cfg = tiny(bn="shared"), tiny(bn="shared", num_templates=0)
    params, stats = isometric.init(mixed_cfg, jax.random.key(0), 1, [5])
    plain_params, _ = isometric.init(plain_cfg, jax.random.key(1), 1, [5])
    plain_params = P.load_matching(plain_params, params)   # adapters, BN and head
    plain_params = P.replace_subtree(plain_params, "shared/layers", params["shared"]["templates"])
    x = jax.random.uniform(jax.random.key(2), (4, 16, 16, 1))
    a, _, sa = isometric.apply(mixed_cfg, params, stats, x, train=True, signature=[0, 1, 2])
    b, _, sb = isometric.apply(plain_cfg, plain_params, stats, x, train=True)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), sa, sb)
    assert a.shape == (4, 5)


def test_trees_follow_the_shared_and_tasks_layout():
    params, stats = isometric.init(tiny(), jax.random.key(0), 1, [3, 4])
    assert set(params) == {"shared", "tasks"} and set(params["tasks"]) == {"task0", "task1"}
    assert set(params["tasks"]["task1"]) == {"mixture", "bn", "head"}
    assert set(stats) == {"tasks"} and set(stats["tasks"]) == {"task0", "task1"}
    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))
    _, _, new = isometric.apply(tiny(), params, stats, x, task="task1", train=True)
    assert changed_paths(stats, new) and all(p.startswith("tasks/task1/") for p in changed_paths(stats, new))


def test_layer_weights_are_softmax_mixtures_of_templates():
    cfg = tiny(se=True, bn="mixed")
    params, _ = isometric.init(cfg, jax.random.key(0), 1, [3, 4])
    xi = jax.nn.softmax(params["tasks"]["task1"]["mixture"], -1)
    w = isometric.layer_weights(cfg, params, "task1")
    bank = params["shared"]["templates"]
    assert set(w) == set(bank) and {"se_down", "dw_b", "bn1_scale"} <= set(w)
    np.testing.assert_allclose(w["dw"][2], sum(xi[2, k] * bank["dw"][k] for k in range(3)), rtol=1e-5, atol=1e-6)


def test_regularizers():
    k = 4
    one_hot, uniform = jax.nn.one_hot(jnp.array([0, 2]), k), jnp.full((2, k), 1 / k)
    assert float(T.entropy(one_hot)) == pytest.approx(0.0, abs=1e-5)
    assert float(T.entropy(uniform)) == pytest.approx(np.log(k), rel=1e-4)
    bank = {"w": jax.random.normal(jax.random.key(0), (k, 3, 5))}
    assert float(T.clustering(one_hot, bank)) == pytest.approx(0.0, abs=1e-6)
    assert float(T.clustering(uniform, bank)) > 0.1
    g = jax.grad(lambda x: T.entropy(jax.nn.softmax(x)))(jnp.array([[1.0, 0.0, 0.0, 0.0]]))
    assert float(g[0, 0]) < 0  # lowering entropy raises the dominant logit


def test_signatures_and_one_hotness():
    assert T.signature("sequential", 6, 3) == [0, 0, 1, 1, 2, 2]
    assert T.signature("cyclic", 5, 2) == [0, 1, 0, 1, 0]
    r = T.signature("random", 8, 3, seed=1)
    assert len(r) == 8 and set(r) <= {0, 1, 2} and r == T.signature("random", 8, 3, seed=1)
    assert T.signature("learned", 6, 3) is None
    with pytest.raises(ValueError, match="Unknown signature"):
        T.signature("zigzag", 6, 3)
    assert isometric.one_hotness(jax.nn.one_hot(jnp.array([1, 0]), 3)) == pytest.approx(1.0)
    assert isometric.one_hotness(jnp.full((2, 4), 0.25)) == pytest.approx(0.25)


def test_loss_factories_are_memoised_so_compiled_steps_are_reused():
    cfg = tiny()
    assert T.multitask_loss(cfg, {"task0": None}, entropy_weight=0.01) is \
        T.multitask_loss(tiny(), {"task0": None}, entropy_weight=0.01)
    assert T.multitask_loss(cfg, {"task0": [0, 1, 2]}) is T.multitask_loss(cfg, {"task0": (0, 1, 2)})
    assert T.multitask_loss(cfg, {"task0": None}) is not T.multitask_loss(cfg, {"task1": None})
    assert T.moment_matching_loss(cfg, "task0", "task1") is T.moment_matching_loss(tiny(), "task0", "task1")
    assert T.adversarial_loss(cfg, "task0", "task1", "grl") is not T.adversarial_loss(cfg, "task0", "task1", "adda")
    base = T.multitask_loss(cfg, {"task2": None})
    assert X.learned_interpolation_loss(base, "task2") is X.learned_interpolation_loss(base, "task2")
    assert M.logits_fn(cfg, "task0") is M.logits_fn(tiny(), "task0")


def test_every_task_is_evaluated_by_one_traced_program(monkeypatch):
    cfg = tiny(width=6)   # a config no other test evaluates: nothing is in the trace cache yet
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3, 3])
    stats = jax.tree.map(lambda v: v + 0.1, stats)   # non-trivial moving statistics, different from init
    params = dict(params, tasks={t: jax.tree.map(lambda v, i=i: v + 0.01 * i, p)
                                 for i, (t, p) in enumerate(params["tasks"].items())})
    ds = tiny_dataset(n=8)
    traces, apply = [], isometric.apply
    monkeypatch.setattr(isometric, "apply", lambda *a, **kw: traces.append(kw["task"]) or apply(*a, **kw))
    for task in ("task0", "task1", "task2"):
        expected = apply(cfg, params, stats, jnp.asarray(ds.test_images), task=task)[0]
        view = M.task_view(dict(params=params, batch_stats=stats), task)
        logits = train.predict(M.logits_fn(cfg, M.VIEWED_TASK), view, ds.test_images)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
        assert M.evaluate(cfg, params, stats, ds, task) == pytest.approx(
            float(np.mean(np.argmax(expected, -1) == ds.test_labels)))
    assert traces == [M.VIEWED_TASK], traces   # traced once, reused by the other tasks


def test_multitask_rules_and_batches():
    params, _ = isometric.init(tiny(), jax.random.key(0), 1, [3, 3])
    ocfg = common.optim_config(lr_mults=T.multitask_rules(3.0, fixed_signature=True), default_mult=1.0)
    mask = P.flatten(optim.trainable_mask(params, ocfg))
    assert not mask["tasks/task0/mixture"] and not mask["tasks/task1/mixture"] and mask["shared/adapter_in/kernel"]
    loss = T.multitask_loss(tiny(), {"task0": None, "task1": None})
    tasks = {"task0": tiny_dataset(seed=0), "task1": tiny_dataset(seed=1)}
    batch = data.multitask_batch(tasks, 0, 8, 0)
    _, (_, metrics) = loss(params, isometric.init(tiny(), jax.random.key(0), 1, [3, 3])[1], batch, None)
    assert {"ce_task0", "ce_task1", "acc_task0", "acc_task1"} <= set(metrics)


def test_transfer_rules_train_only_target_private_parts():
    params, _ = isometric.init(tiny(), jax.random.key(0), 1, [3, 3, 3])
    trained = trainable_paths(params, T.transfer_rules("task2", "source", 3.0))
    assert trained and all(k.startswith("tasks/task2/") for k in trained)
    assert "tasks/task2/mixture" in trained and any(k.startswith("tasks/task2/bn/") for k in trained)
    trained = trainable_paths(params, T.transfer_rules("task2", "bn_logits", 3.0))
    assert "tasks/task2/mixture" not in trained and "tasks/task2/head/kernel" in trained


def test_bad_input_is_one_sentence():
    with pytest.raises(ValueError, match="Unknown BN mode"):
        isometric.init(tiny(bn="sometimes"), jax.random.key(0), 1, [3])
    config = templates_config.get_config("smoke")
    config.mode = "everything"
    with pytest.raises(ValueError, match="Unknown templates mode"):
        run_module.run(config, "/tmp/unused_templates_bad")
    with pytest.raises(ValueError, match="Unknown transfer init"):
        T.compare_transfer_inits(tiny(), tiny_recipe(), [tiny_dataset()], tiny_dataset(), inits=["psychic"],
                                 num_steps=1, interp_temperature=0.1, interp_score_examples=8, interp_lr_mult=1.0,
                                 interp_tune_steps=1)
    with pytest.raises(ValueError, match="Unknown adaptation method"):
        T.compare_adaptation(tiny(), tiny_recipe(), tiny_dataset(), tiny_dataset(), methods=["telepathy"],
                             num_steps=1, adversarial=T.Adversarial(), bn_stats_baseline=False)


def test_moment_distance():
    a = jax.random.normal(jax.random.key(0), (64, 5))
    assert float(T.moment_distance(a, a)) == pytest.approx(0.0, abs=1e-8)
    assert float(T.moment_distance(a, a + 1.0)) > 1.0


# --- transfer to a new task on frozen templates ----------------------------------------------------------

def test_interpolation_weights_sum_to_one_and_favour_the_more_accurate_source():
    for temperature in (0.0, 0.05, 1.0):
        w = T.interpolation_weights([0.2, 0.9, 0.5], temperature)
        assert w.shape == (3,) and float(w.sum()) == pytest.approx(1.0) and np.all(w >= 0)
        assert w[1] > w[2] > w[0]  # ordered like the accuracies
    np.testing.assert_allclose(T.interpolation_weights([0.2, 0.6], 0.0), [0.25, 0.75])
    assert T.interpolation_weights([0.2, 0.9], 0.01)[1] > 0.99  # low temperature -> best source only
    np.testing.assert_allclose(T.interpolation_weights([0.0, 0.0], 0.0), [0.5, 0.5])
    with pytest.raises(ValueError, match="finite source scores"):
        T.interpolation_weights([], 0.1)


def test_interpolated_logits_are_the_convex_combination_of_source_mixtures():
    logits = jax.random.normal(jax.random.key(0), (3, 4, 2))  # S=3 sources, L=4, K=2
    xi = jax.nn.softmax(logits, -1)
    one = jax.nn.softmax(T.interpolate_logits(logits, jnp.array([0.0, 1.0, 0.0])), -1)
    np.testing.assert_allclose(one, xi[1], rtol=1e-5, atol=1e-6)
    w = jnp.array([0.5, 0.3, 0.2])
    mixed = jax.nn.softmax(T.interpolate_logits(logits, w), -1)
    np.testing.assert_allclose(mixed, 0.5 * xi[0] + 0.3 * xi[1] + 0.2 * xi[2], rtol=1e-5, atol=1e-6)


def test_source_scores_rank_the_source_that_fits_the_target_data_first():
    """Source 0 always predicts class 0, source 1 class 2; the target data is mostly class 0."""
    cfg = tiny()
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3, 3])
    for t, c in (("task0", 0), ("task1", 2)):
        params = P.replace_subtree(params, f"tasks/{t}/head",
                                   dict(kernel=jnp.zeros((8, 3)), bias=10.0 * jax.nn.one_hot(c, 3)))
    images = np.asarray(jax.random.uniform(jax.random.key(1), (20, 16, 16, 1)))
    labels = np.array([0] * 15 + [2] * 5)
    scored = X.source_scores(cfg, params, stats, images, labels, ["task0", "task1"], num_classes=3)
    np.testing.assert_allclose(scored["scores"], [0.75, 0.25])
    assert scored["kind"] == ["head", "head"]
    w = T.interpolation_weights(scored["scores"], 0.1)
    assert w[0] > 0.9 and float(w.sum()) == pytest.approx(1.0)
    probe = X.source_scores(cfg, params, stats, images, labels, ["task0"], num_classes=5)  # other label space
    assert probe["kind"] == ["probe"] and 0.0 <= probe["scores"][0] <= 1.0


def test_learned_interpolation_trains_only_the_coefficients_and_materializes():
    cfg = tiny()
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3, 3])
    src = X.source_logits(params, ["task0", "task1"])
    params = X.init_interp(params, "task2", src)
    np.testing.assert_allclose(jax.nn.softmax(params["tasks"]["task2"]["interp"]["alpha"]), [0.5, 0.5], rtol=1e-6)
    trained = trainable_paths(params, X.learned_interp_rules("task2", 10.0))
    assert "tasks/task2/interp/alpha" in trained and "tasks/task2/mixture" not in trained
    assert "tasks/task2/interp/source_logits" not in trained  # the sources are constants
    assert all(k.startswith("tasks/task2/") for k in trained) and "tasks/task2/head/kernel" in trained
    loss = X.learned_interpolation_loss(T.multitask_loss(cfg, {"task2": None}), "task2")
    batch = {"task2": dict(image=jax.random.uniform(jax.random.key(1), (8, 16, 16, 1)), label=jnp.arange(8) % 3)}
    grads = jax.jit(jax.grad(lambda p: loss(p, stats, batch, None)[0]))(params)["tasks"]["task2"]
    assert float(jnp.abs(grads["interp"]["alpha"]).sum()) > 0              # alpha gets a gradient
    assert float(jnp.abs(grads["mixture"]).sum()) == 0                     # the stored xi is overwritten
    assert float(jnp.abs(grads["interp"]["source_logits"]).sum()) == 0     # the sources are constants
    params["tasks"]["task2"]["interp"]["alpha"] = jnp.array([2.0, -1.0])
    out, w = X.materialize(params, "task2")
    assert "interp" not in out["tasks"]["task2"] and float(w.sum()) == pytest.approx(1.0) and w[0] > w[1]
    np.testing.assert_allclose(isometric.mixture_weights(out, "task2"),
                               w[0] * jax.nn.softmax(src[0], -1) + w[1] * jax.nn.softmax(src[1], -1), atol=1e-6)


def test_new_task_starts_from_the_source_tree_with_a_fresh_task():
    cfg = tiny()
    src, src_stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    params, stats, task = T.new_task_start(cfg, src, src_stats, 5, 1, seed=0)
    assert task == "task2" and params["tasks"]["task2"]["head"]["kernel"].shape == (8, 5)
    assert not changed_paths(src, {k: params[k] for k in ("shared",)} | {"tasks": {t: params["tasks"][t]
                                                                                  for t in ("task0", "task1")}})
    assert set(stats["tasks"]) == {"task0", "task1", "task2"}
    started = X.with_mixture(params, task, src["tasks"]["task1"]["mixture"])
    np.testing.assert_array_equal(started["tasks"]["task2"]["mixture"], src["tasks"]["task1"]["mixture"])
    with pytest.raises(P.SubtreeMismatchError):
        X.with_mixture(params, task, jnp.zeros((2, 2)))


def test_transfer_inits_table_on_tiny_data(tmp_path):
    """The comparison end to end: each init's steps and the interpolation weights it records. One source, so
    its steps are those of the bank adapter below (each compiles once)."""
    sources, target = [tiny_dataset("a", seed=0)], tiny_dataset("t", seed=2)
    inits = ["source", "accuracy_interp", "learned_interp", "learned_interp_tuned"]
    outcome = T.compare_transfer_inits(tiny(), tiny_recipe(workdir=str(tmp_path)), sources, target, inits=inits,
                                       num_steps=2, interp_temperature=0.1, interp_score_examples=12,
                                       interp_lr_mult=10.0, interp_tune_steps=2)
    assert list(outcome.accuracy) == list(outcome.summaries) == inits
    assert outcome.extra["steps"] == {"source": 2, "accuracy_interp": 2, "learned_interp": 2, "learned_interp_tuned": 4}
    assert set(outcome.extra["source_accuracy"]) == {"a"} and outcome.extra["source_task"] == "a"
    interp = outcome.extra["interpolation"]
    assert list(interp) == ["accuracy_interp", "learned_interp"]
    assert interp["accuracy_interp"]["score_kind"] == ["head"] and set(interp["accuracy_interp"]["scores"]) == {"a"}
    assert all(v["weights"] == {"a": pytest.approx(1.0)} for v in interp.values())
    assert set(outcome.counts["per_task"]) == {"task0", "task1"}
    with pytest.raises(ValueError, match="must come after 'learned_interp'"):
        T.compare_transfer_inits(tiny(), tiny_recipe(), sources, target, inits=["learned_interp_tuned"],
                                 num_steps=1, interp_temperature=0.1, interp_score_examples=12,
                                 interp_lr_mult=1.0, interp_tune_steps=1)


def test_transfer_inits_start_from_the_best_source_or_fresh():
    cfg = tiny()
    src, src_stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    params, stats, task = T.new_task_start(cfg, src, src_stats, 3, 1, seed=0)
    ctx = X.TransferContext(cfg, tiny_recipe(), (params, stats), task, tiny_dataset(), {"task0": "a", "task1": "b"},
                            "task1", num_steps=2, interp_temperature=0.1, interp_score_examples=12,
                            interp_lr_mult=10.0, interp_tune_steps=2)
    best, fresh = src["tasks"]["task1"]["mixture"], params["tasks"][task]["mixture"]
    with pytest.raises(ValueError, match="worst_source"):
        T.TRANSFER_INITS["worst_source"](ctx)
    ctx.worst_source = "task0"
    worst = src["tasks"]["task0"]["mixture"]
    assert not np.array_equal(worst, best)
    for kind, mixture, xi_trains in (("source", best, True), ("bn_logits", best, False), ("random", fresh, True),
                                     ("worst_source", worst, True)):
        start = T.TRANSFER_INITS[kind](ctx)
        np.testing.assert_array_equal(start.params["tasks"][task]["mixture"], mixture)
        assert start.num_steps == 2 and start.loss_fn is None and start.stats is stats
        assert ("tasks/task2/mixture" in trainable_paths(start.params, start.rules)) == xi_trains


def test_plain_baselines_follow_the_paper():
    """Table 2's baseline: the same depth L, no templates, per-task BN + logits; the adaptation baseline (App.
    D.3): K plain layers, so about the template model's parameter count."""
    cfg = tiny(depth=6, num_templates=2)
    table2 = X.plain_config(cfg)
    assert (table2.num_templates, table2.bn, table2.depth) == (0, "per_task", 6)
    adapt = A.plain_adapter_config(cfg)
    assert (adapt.num_templates, adapt.depth) == (0, 2)
    count = lambda c: P.count(isometric.init(c, jax.random.key(0), 1, [3])[0]["shared"])
    assert count(adapt) < count(table2)
    assert abs(count(adapt) - count(cfg)) < 0.2 * count(cfg)   # about the template model's shared parameters


def test_plain_bn_logits_transfer_trains_only_the_new_tasks_bn_and_logits(tmp_path):
    sources, target = [tiny_dataset("a", seed=0), tiny_dataset("b", seed=1)], tiny_dataset("t", seed=2)
    outcome = T.compare_transfer_inits(tiny(), tiny_recipe(workdir=str(tmp_path)), sources, target,
                                       inits=["plain_bn_logits", "worst_source"], num_steps=2, interp_temperature=0.0,
                                       interp_score_examples=12, interp_lr_mult=1.0, interp_tune_steps=0)
    assert set(outcome.accuracy) == {"plain_bn_logits", "worst_source"} and set(outcome.summaries) == {"worst_source"}
    plain = outcome.extra["plain"]
    assert set(plain["source_accuracy"]) == {"a", "b"} and set(plain["params"]["per_task"]) == {"task0", "task1", "task2"}
    assert outcome.extra["worst_source_task"] in {"a", "b"}
    scores = outcome.extra["validation_scores"]
    assert scores[outcome.extra["worst_source_task"]] == min(scores.values())
    # what the plain target trained: only its BN patch and logits (the rule the baseline uses)
    params, _ = isometric.init(X.plain_config(tiny()), jax.random.key(0), 1, [3, 3, 3])
    trained = trainable_paths(params, X.plain_transfer_rules("task2"))
    assert trained and all(p.startswith(("tasks/task2/bn", "tasks/task2/head")) for p in trained)
    assert any("/bn" in p for p in trained) and any("/head" in p for p in trained)


def test_training_a_new_task_leaves_shared_parts_and_sources_untouched():
    """What transfer trains (the step of the 'source' init above)."""
    cfg = tiny()
    src, src_stats = isometric.init(cfg, jax.random.key(0), 1, [3])
    params, stats, task = T.new_task_start(cfg, src, src_stats, 3, 1, seed=0)
    run = T.train_tasks(cfg, tiny_recipe(), {task: tiny_dataset()}, start=(params, stats),
                        rules=T.transfer_rules(task, "source", 3.0), default_mult=0.0)
    changed = changed_paths(params, run.params)
    assert "tasks/task1/mixture" in changed and all(p.startswith("tasks/task1/") for p in changed)
    assert all(p.startswith("tasks/task1/") for p in changed_paths(stats, run.model_state))


# --- the task bank adapter ----------------------------------------------------------------------------------

def test_bank_adapter_trains_a_new_mixture_on_frozen_templates_and_exports_it(tmp_path):
    from modular import checkpoint
    cfg, source, target = tiny(), tiny_dataset("src"), tiny_dataset("tgt", seed=1)
    settings = dict(optim_cfg=common.optim_config(lr=0.05), batch_size=8, seed=0, mixture_lr_mult=3.0,
                    entropy_weight=0.01, log_every=0)
    params, stats, fit = T.train_source(cfg, source, num_steps=2, workdir=str(tmp_path / "source"),
                                        checkpoint_every=0, **settings)
    assert set(params["tasks"]) == {"task0"} and fit.resumed_from is None
    path = str(tmp_path / "bank" / "tgt.msgpack")
    adapted = T.adapt(cfg, params, stats, target, num_steps=2, workdir=str(tmp_path / "adapt"), bank_path=path,
                      meta=dict(target="tgt"), **settings)
    private = {"params": params["tasks"]["task0"], "batch_stats": stats["tasks"]["task0"]}
    assert os.path.exists(path) and adapted.file_bytes == os.path.getsize(path)
    assert adapted.trainable == P.count(private["params"])  # the target's mixture, BN and head
    assert adapted.stored == adapted.trainable + P.count(private["batch_stats"]) and 0.0 <= adapted.accuracy <= 1.0
    assert 1 / 3 <= adapted.info["one_hotness"] <= 1.0 and not adapted.resumed
    subtree, meta = checkpoint.import_subtree(path, backbone=params["shared"])  # the templates stayed frozen
    assert meta["target"] == "tgt" and set(subtree) == {"params", "batch_stats"}
    start, start_stats, task = T.new_task_start(cfg, params, stats, 3, 1, seed=0)
    file_params, file_stats = {"tasks": {task: subtree["params"]}}, {"tasks": {task: subtree["batch_stats"]}}
    assert not P.matching_report(start, file_params)["unused"] and not P.matching_report(start_stats, file_stats)["unused"]
    rebuilt, rebuilt_stats = P.load_matching(start, file_params), P.load_matching(start_stats, file_stats)
    assert T.evaluate(cfg, rebuilt, rebuilt_stats, target, task) == pytest.approx(adapted.accuracy)


# --- adaptation to a new domain ---------------------------------------------------------------------------

def test_gradient_reversal_is_identity_forward_and_negated_backward():
    x = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(A.gradient_reversal(x, 0.5), x)
    f = lambda v: jnp.sum(v ** 2)
    np.testing.assert_allclose(jax.grad(lambda v: f(A.gradient_reversal(v, 0.5)))(x), -0.5 * jax.grad(f)(x))


@pytest.mark.parametrize("formulation", ["adda", "grl"])
def test_adversarial_objective_trains_discriminator_to_separate_and_target_to_fool(formulation):
    d = A.discriminator_init(jax.random.key(0), 6, hidden=8)
    fs = jax.random.normal(jax.random.key(1), (64, 6)) + 1.0
    ft = jax.random.normal(jax.random.key(2), (64, 6)) - 1.0
    obj = lambda d, fs, ft: A.adversarial_terms(d, fs, ft, formulation)[0]
    gd, gs, gt = jax.grad(obj, argnums=(0, 1, 2))(d, fs, ft)
    assert float(jnp.abs(gs).sum()) == 0  # the source side is a constant
    d_loss = lambda d: A.adversarial_terms(d, fs, ft, formulation)[1]["disc_loss"]
    d_new = jax.tree.map(lambda p, g: p - 0.05 * g, d, gd)
    assert float(d_loss(d_new)) < float(d_loss(d))  # a descent step on the objective helps D separate
    source_logit = lambda f: jnp.mean(A.discriminator_apply(d, f))
    assert float(source_logit(ft - 0.5 * gt)) > float(source_logit(ft))  # ...and makes targets look like source
    if formulation == "grl":  # target gradient = minus the discriminator loss gradient
        plain = jax.grad(lambda f: A.domain_bce(A.discriminator_apply(d, f), 0.0))(ft)  # no reversal layer
        np.testing.assert_allclose(gt, -plain, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="Unknown adversarial formulation"):
        A.adversarial_terms(d, fs, ft, "wgan")


def test_adversarial_adaptation_moves_only_target_mixture_and_discriminator():
    cfg = tiny()
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    start = A.add_discriminator(A.with_reference(params, stats), jax.random.key(1), cfg.out_dim, hidden=8)
    images = {"source": (np.asarray(jax.random.uniform(jax.random.key(2), (8, 16, 16, 1))), None),
              "target": (1.0 - np.asarray(jax.random.uniform(jax.random.key(3), (8, 16, 16, 1))), None)}
    run = train.train_subtrees(start, stats, loss_fn=T.adversarial_loss(cfg, "task0", "task1"),
                               optim_cfg=common.optim_config(lr=0.05),
                               rules=[(r"tasks/task1/mixture", 3.0), A.discriminator_rule(1.0)], default_mult=0.0,
                               batch_fn=lambda step: data.multitask_batch(images, step, 8, 0), num_steps=3,
                               log_every=1, verbose=False)
    assert {"disc_loss", "domain_accuracy"} <= set(run.fit.history[-1])
    changed = changed_paths(start, run.params)
    assert "tasks/task1/mixture" in changed and any(k.startswith("adversary/") for k in changed)
    assert all(k == "tasks/task1/mixture" or k.startswith("adversary/") for k in changed), changed
    assert set(A.model_params(run.params)) == {"shared", "tasks"}


def test_unsupervised_adaptation_of_a_plain_input_adapter_keeps_its_frozen_source_copy():
    """Source and target are the same task of a plain net: the loss's source side stays the frozen copy."""
    cfg = tiny(num_templates=0, bn="shared")
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3])
    run = T.adapt_unsupervised(cfg, tiny_recipe(), params, stats, tiny_dataset(seed=0), tiny_dataset(seed=1),
                               method="moment_matching", tunable=r"shared/adapter_in/.*", source_task="task0",
                               target_task="task0", num_steps=2, adversarial=T.Adversarial(), stage=None)
    assert set(run.params) == {"shared", "tasks"}
    changed = changed_paths(params, run.params)
    assert changed == ["shared/adapter_in/bias", "shared/adapter_in/kernel"]
    assert run.fit.history[-1]["moment_distance"] > 0
    # the target's moving BN statistics follow the target domain although only the input adapter trains
    assert any(k.startswith("tasks/task0/") for k in changed_paths(stats, run.model_state))


def test_adapting_xi_or_nothing_re_estimates_only_the_target_tasks_bn_statistics():
    """Tuning only xi, the frozen target task's BN statistics still follow the target domain (as the paper's
    unsupervised runs re-estimate them); tuning nothing (the BN-statistics-only control) moves those statistics
    and no parameter. The source task's statistics stay as they were in both."""
    cfg = tiny()
    params, stats = isometric.init(cfg, jax.random.key(0), 1, [3, 3])
    kw = dict(method="moment_matching", source_task="task0", target_task="task1", num_steps=2,
              adversarial=T.Adversarial(), stage=None)
    for tunable, moved in ((r"tasks/task1/mixture", ["tasks/task1/mixture"]), (None, [])):
        run = T.adapt_unsupervised(cfg, tiny_recipe(), params, stats, tiny_dataset(seed=0), tiny_dataset(seed=1),
                                   tunable=tunable, **kw)
        assert changed_paths(params, run.params) == moved
        stats_moved = changed_paths(stats, run.model_state)
        assert stats_moved and all(k.startswith("tasks/task1/") for k in stats_moved), stats_moved


# --- the isometric network as a models.build architecture --------------------------------------------------

def test_isometric_is_a_registered_split_model_every_method_can_use():
    assert "isometric" in models.known_names()
    cfg = models.default_config("isometric")
    cfg.update(width=4, depth=3, out_dim=8)
    model = models.build(cfg, 5)
    assert isinstance(model, models.SplitModel)
    variables = models.init(model, jax.random.key(0), (1, 16, 16, 1))
    flat = P.flatten(variables["params"])
    assert {"extractor/mixture", "extractor/templates/dw", "extractor/bn1/scale", "head/classifier/kernel"} <= set(flat)
    assert flat["extractor/mixture"].shape == (3, 3)
    x = jax.random.uniform(jax.random.key(1), (4, 16, 16, 1))
    logits, out, new_state = models.apply(model, variables, x, mode="train")
    assert logits.shape == (4, 5) and {"block0", "block2", "features", "pre_logits"} <= set(out)
    assert changed_paths(variables["batch_stats"], new_state["batch_stats"])
    eval_logits, _, same = models.apply(model, variables, x)
    assert eval_logits.shape == (4, 5) and not changed_paths(variables["batch_stats"], same["batch_stats"])
    sb = trainable_paths(variables["params"], patches.lr_rules("sb_last"))  # S/B patches find its BN
    assert "extractor/bn2/bias" in sb and "head/classifier/kernel" in sb and "extractor/mixture" not in sb
    plain = models.build(dict(cfg, num_templates=0), 5)
    assert "extractor/layers/dw" in P.flatten(models.init(plain, jax.random.key(0), (1, 16, 16, 1))["params"])
    with pytest.raises(ValueError, match="Unknown BN mode"):
        models.build(dict(cfg, bn="sometimes"), 5)
    with pytest.raises(ValueError, match="Split 'stage1' is not a unit of isometric"):
        models.build(dict(cfg, split="stage1"), 5)
