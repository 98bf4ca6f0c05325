"""Compatible components: IIW, the DCC label map, frozen auxiliary heads, BN-mode recombination, end to end."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import common as common_config
from configs import compat as compat_config
from experiments import compat as E
from modular import params as P
from modular.data import Dataset
from modular.methods import compat as C

TINY = ml_collections.ConfigDict(dict(name="resnet", depth=8, width=4, split="stage2"))


def _mods(num=10, common=10):
    return C.build_modules(TINY, num, num, common)


def _batch(seed):
    rng = np.random.default_rng(seed)
    return {t: {"image": rng.random((8, 8, 8, 1), np.float32), "label": rng.integers(0, 10, 8).astype(np.int32)}
            for t in "ab"}


def test_identical_init_gives_equal_networks_and_independent_differs():
    mods = _mods()
    p_iiw, s_iiw = C.init_variables(mods, jax.random.key(0), (8, 8, 1), identical_init=True)
    p_ind, _ = C.init_variables(mods, jax.random.key(0), (8, 8, 1), identical_init=False)
    assert set(p_iiw) == set(s_iiw) == {"shared", "tasks"}
    assert set(p_iiw["shared"]) == {"dcc", "rp"} and set(p_iiw["tasks"]) == {"a", "b"}
    nets, ind = p_iiw["tasks"], p_ind["tasks"]
    same = jax.tree.map(lambda x, y: bool(jnp.all(x == y)), nets["a"], nets["b"])
    assert all(jax.tree.leaves(same))
    differ = jax.tree.map(lambda x, y: bool(jnp.any(x != y)), ind["a"]["extractor"], ind["b"]["extractor"])
    assert any(jax.tree.leaves(differ))
    assert jax.tree.structure(s_iiw["tasks"]["a"]) == jax.tree.structure(s_iiw["tasks"]["b"])


def test_common_classes_map_and_validation():
    table = C.common_label_map([3, 7], 10)
    assert table[3] == 0 and table[7] == 1 and (np.delete(table, [3, 7]) == -1).all()
    assert C.resolve_common_classes(None, 10, 6) == list(range(6))
    with pytest.raises(ValueError, match="common_classes"):
        C.resolve_common_classes([3, 3], 10, 10)


def test_settings_names_round_trip_in_the_papers_order():
    assert [C.setting_name(*s) for s in C.SETTINGS] == list(C.PAPER_FIG2)
    for s in C.SETTINGS:
        assert C.parse_setting(C.setting_name(*s)) == s
    assert C.parse_setting("IIW+RP+DCC") == (True, True, True) and C.parse_setting("DCC") == (True, False, False)
    for bad in ("", "IIW+XYZ", "dcc"):
        with pytest.raises(ValueError, match="compat setting"):
            C.parse_setting(bad)
    assert C.default_options().rp_fraction == 1.0 and C.default_options().schedule == "joint"


def test_task_loss_reaches_only_its_networks():
    """`make_loss_fn` is a network's own task loss (the head update, fast transfer); pairs train with DCC and RP
    through the study's alternating step (tests/test_compat_study.py)."""
    mods = _mods(common=2)
    params, stats = C.init_variables(mods, jax.random.key(1), (8, 8, 1), identical_init=False)
    batch = _batch(0)
    fn = C.make_loss_fn(mods, ("a", "b"))
    assert fn is C.make_loss_fn(mods, ("a", "b"))  # memoised
    grads, (new_stats, metrics) = jax.jit(jax.grad(fn, has_aux=True))(params, stats, batch, None)
    assert set(metrics) == {"loss_a", "acc_a", "loss_b", "acc_b"}
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    assert float(optax_norm(grads["tasks"]["a"])) > 0 and float(optax_norm(grads["tasks"]["b"])) > 0
    assert float(optax_norm(grads["shared"])) == 0
    grads, _ = jax.jit(jax.grad(C.make_loss_fn(mods, ("b",)), has_aux=True))(params, stats, batch, None)
    assert float(optax_norm(grads["tasks"]["a"])) == 0 and float(optax_norm(grads["tasks"]["b"]["head"])) > 0


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(x ** 2) for x in jax.tree.leaves(tree)))


def test_recombination_own_network_matches_plain_apply_and_modes_differ():
    mods = _mods()
    params, stats = C.init_variables(mods, jax.random.key(2), (8, 8, 1), identical_init=False)
    x = np.random.default_rng(1).random((20, 8, 8, 1), np.float32)
    logits = C.recombined_logits(mods, params, stats, "a", "a", x, mode="eval", batch_size=7)
    net, net_s = params["tasks"]["a"], stats["tasks"]["a"]
    feats, _ = mods.extractor.apply({"params": net["extractor"], "batch_stats": net_s["extractor"]}, x)
    want, _ = mods.task_head_a.apply({"params": net["head"], "batch_stats": net_s["head"]}, feats)
    np.testing.assert_allclose(logits, want, atol=1e-4)
    bs = C.recombined_logits(mods, params, stats, "a", "b", x, mode="batch_stats")
    assert bs.shape == (20, 10) and not np.allclose(bs, C.recombined_logits(mods, params, stats, "a", "b", x, mode="eval"))
    with pytest.raises(ValueError, match="mode"):
        C.recombined_logits(mods, params, stats, "a", "b", x, mode="train")


def test_bad_schedule_is_one_sentence(tmp_path):
    config = compat_config.get_config("smoke")
    config.compat.schedule = "sometimes"
    with pytest.raises(ValueError, match="schedule"):
        E.run(config, str(tmp_path))


def _same(x, y):
    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def test_uda_moves_only_the_extractor_against_the_frozen_rotation_head():
    mods = _mods()
    params, stats = C.init_variables(mods, jax.random.key(3), (8, 8, 1), identical_init=False)
    images = np.random.default_rng(2).random((24, 8, 8, 1), np.float32)
    # The RP loss does reach the RP head and no task head, so only the optimizer rules keep the head still.
    loss = C.make_rp_adaptation_loss(mods, "a")
    grads, (_, metrics) = jax.jit(jax.grad(loss, has_aux=True))(params, stats, {"a": {"image": images[:8]}}, None)
    net = grads["tasks"]["a"]
    assert float(optax_norm(grads["shared"]["rp"])) > 0 and float(optax_norm(net["extractor"])) > 0
    assert float(optax_norm(net["head"])) == 0 and "rp_acc_target" in metrics
    ocfg = common_config.optim_config(lr=1e-2)
    adapted = C.adapt_extractor_rp(mods, params, stats, "a", images, optim_cfg=ocfg, num_steps=3, batch_size=8,
                                   workdir=None, verbose=False)
    new_p, new_s = adapted.params, adapted.model_state
    for part in ("shared/rp", "shared/dcc", "tasks/b", "tasks/a/head"):
        assert _same(P.get_subtree(params, part), P.get_subtree(new_p, part)), part
        assert _same(P.get_subtree(stats, part), P.get_subtree(new_s, part)), part
    assert not _same(params["tasks"]["a"]["extractor"], new_p["tasks"]["a"]["extractor"])
    assert not _same(stats["tasks"]["a"]["extractor"], new_s["tasks"]["a"]["extractor"])  # target BN statistics
    # Adam keeps two moments for the extractor and nothing for the frozen parts.
    assert adapted.optimizer_state_size == 2 * P.count(params["tasks"]["a"]["extractor"])
    # The BN-statistics-only control moves the statistics but no weight.
    ctrl = C.reestimate_extractor_stats(mods, params, stats, "a", images, batch_size=8, num_batches=2)
    assert not _same(stats["tasks"]["a"]["extractor"], ctrl["tasks"]["a"]["extractor"])
    assert _same(stats["shared"], ctrl["shared"])
    assert 0.0 <= C.rotation_accuracy(mods, new_p, new_s, "a", images) <= 1.0


def test_fast_transfer_zero_epoch_is_the_untrained_recombination():
    mods = _mods()
    params, stats = C.init_variables(mods, jax.random.key(4), (8, 8, 1), identical_init=False)
    rng = np.random.default_rng(3)
    ds = Dataset(name="toy", train_images=rng.random((40, 8, 8, 1), np.float32),
                 train_labels=rng.integers(0, 10, 40).astype(np.int32),
                 test_images=rng.random((30, 8, 8, 1), np.float32),
                 test_labels=rng.integers(0, 10, 30).astype(np.int32), num_classes=10)
    kw = dict(extractor_of="a", head_of="b", optim_cfg=common_config.optim_config(lr=1e-2), batch_size=8,
              workdir=None, verbose=False)
    direct = {m: C.recombination_accuracy(mods, params, stats, "a", "b", ds.test_images, ds.test_labels,
                                          list(range(10)), mode=m) for m in ("batch_stats", "eval")}
    zero = C.transfer_head(mods, params, stats, ds, epochs=0, **kw)
    assert zero["curve"] == [dict(epoch=0, step=0, **direct)] and zero["train_seconds"] == 0.0
    one = C.transfer_head(mods, params, stats, ds, epochs=1, **kw)
    assert one["curve"][0] == zero["curve"][0] and one["steps_per_epoch"] == 5
    assert [(e["epoch"], e["step"]) for e in one["curve"]] == [(0, 0), (1, 5)]
    fresh_p, fresh_s = C.with_fresh_head(mods, params, stats, "b", (8, 8, 1), jax.random.key(9))
    assert not _same(fresh_p["tasks"]["b"]["head"], params["tasks"]["b"]["head"])
    for part in ("shared", "tasks/a", "tasks/b/extractor"):
        assert _same(P.get_subtree(fresh_p, part), P.get_subtree(params, part)), part
    p_new, s_new = C.recombine_trees(fresh_p, fresh_s, extractor_of="a", into="b")
    assert p_new["tasks"]["b"]["extractor"] is fresh_p["tasks"]["a"]["extractor"]
    assert p_new["tasks"]["b"]["head"] is fresh_p["tasks"]["b"]["head"]
    reinit = C.transfer_head(mods, fresh_p, fresh_s, ds, epochs=0, **kw)
    assert reinit["curve"][0]["eval"] == C.recombination_accuracy(mods, p_new, s_new, "b", "b", ds.test_images,
                                                                  ds.test_labels, list(range(10)), mode="eval")
    with pytest.raises(ValueError, match="transfer_train"):
        C.transfer_head(mods, params, stats, ds, epochs=1, train_part="extractor", **kw)


def test_cross_architecture_pair_shares_heads_through_adapters():
    # The smoke config's networks, as its 'cross_arch' application builds them for the new 10-class head (the
    # compiled initialisers are shared with the smoke study when both run in one process).
    smoke = compat_config.get_config("smoke")
    model = ml_collections.ConfigDict(dict(smoke.model.to_dict(), split=smoke.compat.split))
    width, wrn = smoke.compat.adapter_width, smoke.compat.cross_arch_model
    mods = C.build_modules(model, 10, 10, 10, model_b_cfg=wrn, adapter_width=width)
    params, stats = C.init_variables(mods, jax.random.key(5), (16, 16, 1), identical_init=True)
    nets = params["tasks"]
    assert _same(nets["a"]["head"], nets["b"]["head"])  # IIW across architectures: identical heads
    assert jax.tree.structure(nets["a"]["extractor"]) != jax.tree.structure(nets["b"]["extractor"])
    assert nets["a"]["extractor"]["adapter"]["kernel"].shape[-1] == width
    assert nets["b"]["extractor"]["adapter"]["kernel"].shape[-1] == width
    # Training and recombination through the adapters run in the smoke study's 'cross_arch' application.
    with pytest.raises(ValueError, match="one extractor architecture"):
        C.transfer_head(mods, params, stats, None, extractor_of="a", head_of="b", optim_cfg=None, epochs=0,
                        batch_size=8)
    bad = ml_collections.ConfigDict(dict(wrn.to_dict(), split="stage3"))
    with pytest.raises(ValueError, match="shapes"):
        C.init_variables(C.build_modules(model, 10, 10, 10, model_b_cfg=bad, adapter_width=width), jax.random.key(0),
                         (16, 16, 1), identical_init=False)


def test_head_update_old_task_subset_and_new_heads():
    rng = np.random.default_rng(6)
    ds = Dataset(name="toy", train_images=rng.random((40, 8, 8, 1), np.float32),
                 train_labels=np.arange(40, dtype=np.int32) % 10, test_images=rng.random((20, 8, 8, 1), np.float32),
                 test_labels=np.arange(20, dtype=np.int32) % 10, num_classes=10)
    old = C.applications.class_subset(ds, 5)
    assert old.num_classes == 5 and set(old.train_labels) == set(range(5)) and set(old.test_labels) == set(range(5))
    assert len(old.train_images) == 20 and len(old.test_images) == 10
    np.testing.assert_array_equal(old.train_images, ds.train_images[ds.train_labels < 5])
    for bad in (1, 10):
        with pytest.raises(ValueError, match="old_classes"):
            C.applications.class_subset(ds, bad)
    tree = {"shared": {"rp": 1}, "tasks": {t: {"extractor": t, "head": "old"} for t in "ab"}}
    new = C.applications._with_heads(tree, "new")
    assert new["tasks"]["a"] == {"extractor": "a", "head": "new"} and new["tasks"]["b"]["head"] == "new"
    assert tree["tasks"]["a"]["head"] == "old" and new["shared"] is tree["shared"]


def test_applications_config_and_bad_names():
    cpu = compat_config.get_config("")
    assert set(cpu.compat.applications) == set(C.APPLICATIONS) and len(cpu.compat.settings) == 8
    assert set(cpu.compat.fast_transfer_settings) == {"RP", "IIW+RP"} and cpu.compat.transfer_train == "all"
    assert set(cpu.compat.incremental_orders) == {"incremental", "incremental_ba"} and cpu.seeds == 3
    assert {k: cpu.compat[k] for k in C.default_options()} == C.default_options().to_dict()
    config = compat_config.get_config("smoke")
    config.compat.applications = ("uda", "telepathy")
    with pytest.raises(ValueError, match="applications"):
        E.run(config, "/nonexistent")
    config.compat.applications = ("fast_transfer",)
    config.compat.fast_transfer_settings = ()
    with pytest.raises(ValueError, match="fast_transfer_settings"):
        E.run(config, "/nonexistent")
    config.compat.applications = ("uda",)
    config.compat.rp = False
    with pytest.raises(ValueError, match="rp"):
        E.run(config, "/nonexistent")
    config = compat_config.get_config("smoke")
    config.compat.update(dict(pretrained_settings=("RP",), applications=()))
    with pytest.raises(ValueError, match="pretrained_settings"):
        E.run(config, "/nonexistent")


def _runs(values, **extra):
    """Per-seed metric dicts: recombination `values`, other keys from `extra` (lists per seed)."""
    return [dict(recombination_accuracy=v, own_accuracy=0.95, recombination_accuracy_train_stats=v / 2,
                 unit_correlation=0.0, **{k: x[i] for k, x in extra.items()}) for i, v in enumerate(values)]


def _by_claim(claims, start):
    found = [c for c in claims if c["claim"].startswith(start)]
    assert found, start
    return found


def test_two_sided_equivalence_claim():
    eq = C.claims.claim_equivalent
    assert eq("x", [0.50, 0.51, 0.52], [0.50, 0.50, 0.51], tolerance=0.05)["verdict"] == "holds"
    assert eq("x", [0.70, 0.72, 0.71], [0.50, 0.50, 0.51], tolerance=0.05)["verdict"] == "does not hold"
    assert eq("x", [0.30, 0.31, 0.29], [0.50, 0.50, 0.51], tolerance=0.05)["verdict"] == "does not hold"  # both sides
    assert eq("x", [0.50, 0.60, 0.40], [0.50, 0.50, 0.50], tolerance=0.05)["verdict"] == "inconclusive"
    assert eq("x", [0.5], [0.5], tolerance=0.05)["verdict"] == "inconclusive"   # one seed: no interval
    assert eq("x", [0.6, 0.6], [0.5, 0.5], tolerance=0.05)["kind"] == "deterministic"


def test_study_claims_sized_to_the_paper_and_best_against_every_setting():
    indep = [0.10, 0.12, 0.11]
    per_seed = {"independent": _runs(indep), "RP": _runs([0.11, 0.10, 0.12]), "DCC": _runs([0.65, 0.66, 0.64]),
                "IIW": _runs([0.25, 0.26, 0.24]), "RP+DCC": _runs([0.5, 0.5, 0.51]),
                "IIW+DCC": _runs([0.80, 0.81, 0.79]), "IIW+RP": _runs([0.4, 0.41, 0.39]),
                "IIW+RP+DCC": _runs([0.76, 0.77, 0.75]),
                "IIW+RP+DCC, incremental": _runs([0.75, 0.77, 0.76]),
                "IIW+RP+DCC, incremental_ba": _runs([0.76, 0.76, 0.74])}
    claims = C.claims.study_claims(per_seed, "IIW+RP+DCC")
    rp = _by_claim(claims, "Sec. 4, Fig. 2: RP makes")[0]
    assert rp["verdict"] == "refuted" and rp["kind"] == "effect_size" and rp["paper_effect"] == pytest.approx(39.5)
    assert _by_claim(claims, "Sec. 4, Fig. 2: DCC makes")[0]["verdict"] == "holds"
    # "Best" is tested against every other Fig. 2 setting: here IIW+DCC is above IIW+RP+DCC.
    best = _by_claim(claims, "Sec. 4, Fig. 2: the three methods are complementary")
    assert len(best) == 6
    assert [c["verdict"] for c in best if "IIW+DCC" in c["claim"]] == ["does not hold"]
    inc = _by_claim(claims, "Sec. 4: incremental training is close to joint")
    assert len(inc) == 1 and inc[0]["verdict"] == "holds" and "either way" in inc[0]["claim"]
    # Far below joint is also outside the band (two-sided).
    per_seed["IIW+RP+DCC, incremental"] = per_seed["IIW+RP+DCC, incremental_ba"] = _runs([0.50, 0.51, 0.49])
    far = _by_claim(C.claims.study_claims(per_seed, "IIW+RP+DCC"), "Sec. 4: incremental training is close")
    assert far[0]["verdict"] == "does not hold"
    not_testable = [c for c in claims if c["kind"] == "not_testable"]
    assert not_testable and all(c["verdict"] == "not testable at this scale" for c in not_testable)


def test_cross_architecture_claims_compare_the_same_bn_statistics():
    row = lambda t_bs, own_bs: dict(transferred_bs=t_bs, own_b_bs=own_bs, transferred_stored=0.0, own_b_stored=0.99)
    apps = {"cross_arch": dict(settings=["independent", "RP+DCC"], old_classes=5, new_classes=10, per_seed=[
        {"independent": row(0.1, 0.8), "RP+DCC": row(0.80, 0.81)},
        {"independent": row(0.1, 0.8), "RP+DCC": row(0.79, 0.80)},
        {"independent": row(0.1, 0.8), "RP+DCC": row(0.81, 0.81)}])}
    claims = C.claims.application_claims(apps)
    within = _by_claim(claims, "Sec. 5.2, Fig. 3: the updated head on a non-reference extractor (RP+DCC) is within")
    # Test-batch statistics on both sides: 0.80 vs 0.81 (the stored own_b 0.99 would make it fail).
    assert within[0]["verdict"] == "holds" and "own head 80.7" in within[0]["evidence"]
    assert _by_claim(claims, "Sec. 5.2, Fig. 3: the updated head on a non-reference extractor (RP+DCC) beats")[0][
        "verdict"] == "holds"
