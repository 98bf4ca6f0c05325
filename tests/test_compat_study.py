"""Compat study: alternating minibatches, every image rotated, the step count chosen without test data,
the paper's optimiser, feature similarity."""
import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from configs import common as common_config
from configs import compat as compat_config
from modular import data, optim, protocol
from modular.methods import compat as C
from modular.methods.compat import training as T

TINY = ml_collections.ConfigDict(dict(name="resnet", depth=8, width=4, split="stage2", bn_momentum=0.9))


def _leaves_equal(x, y):
    return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)))


def _group(v, seeds=(0,), num_steps=4):
    mods = T.modules_for(TINY, v, 10, 10, 10)
    inits = [T.init_member(mods, v, s, (8, 8, 1)) for s in seeds]
    txs = T.optimisers(common_config.optim_config(lr=1e-2), v, num_steps)
    return mods, T.pack([{"params": p, "stats": s, "opt": T.init_opt_state(txs, v, p)} for p, s in inits])


def _batch(members, seed=0, n=8, rp=True):
    rng = np.random.default_rng(seed)
    b = {"image": rng.random((members, n, 8, 8, 1), np.float32),
         "label": rng.integers(0, 10, (members, n)).astype(np.int32),
         "dcc_weight": np.ones((members,), np.float32), "rp_weight": np.ones((members,), np.float32)}
    if rp:
        b["rp_ids"] = rng.integers(0, 4, (members, n)).astype(np.int32)
    return b


def _step(mods, v, task, train_shared=True, rp_fraction=1.0):
    optim_json = common_config.optim_config(lr=1e-2).to_json()
    return T.member_step(mods, v, task, train_shared, tuple(range(10)), 10, rp_fraction, optim_json, 4)


def test_alternating_plan_and_a_step_moves_only_its_own_network():
    assert T.plan("joint", 2) == [("a", True), ("b", True), ("a", True), ("b", True)]
    assert T.plan("incremental", 2) == [("a", True), ("a", True), ("b", False), ("b", False)]
    assert T.plan("incremental_ba", 1) == [("b", True), ("a", False)]
    v = T.Variant(dcc=True, rp=True, iiw=False)
    mods, state = _group(v, seeds=(0, 1))
    before = T.unpack(state)[1]
    after, metrics = _step(mods, v, "a")(state, _batch(2))
    after = T.unpack(after)[1]
    assert _leaves_equal(before["params"]["tasks"]["b"], after["params"]["tasks"]["b"])
    assert _leaves_equal(before["opt"]["b"], after["opt"]["b"])
    assert _leaves_equal(before["stats"]["tasks"]["b"], after["stats"]["tasks"]["b"])
    for part in (("tasks", "a"), ("shared", "dcc"), ("shared", "rp")):
        assert not _leaves_equal(before["params"][part[0]][part[1]], after["params"][part[0]][part[1]]), part
    assert metrics["rp"].shape == (2,)  # one value per member
    # b's step against frozen heads (incremental phase 2) leaves the heads and their statistics alone.
    _, state = _group(v)
    before = T.unpack(state)[0]
    after = T.unpack(_step(mods, v, "b", train_shared=False)(state, _batch(1))[0])[0]
    assert _leaves_equal(before["params"]["shared"], after["params"]["shared"])
    assert _leaves_equal(before["stats"]["shared"], after["stats"]["shared"])
    assert not _leaves_equal(before["params"]["tasks"]["b"], after["params"]["tasks"]["b"])


@pytest.mark.parametrize("name, wd", [("adam", 0.0), ("adam", 1e-4), ("momentum", 0.0)])
def test_one_optimizer_state_program_for_every_schedule_and_length(name, wd):
    """Groups that differ in schedule, DCC or step count make their members' optimizer state with one
    program, and it gives the state each group's own optimisers would."""
    cfg = common_config.optim_config(name=name, lr=1e-2, weight_decay=wd, schedule="step")
    variants = [T.Variant(dcc=True, rp=True, iiw=False), T.Variant(dcc=True, rp=True, iiw=True, schedule="incremental")]
    mods = T.modules_for(TINY, variants[0], 10, 10, 10)
    params, _ = T.init_member(mods, variants[0], 0, (8, 8, 1))
    program = T.init_opt_program(cfg, variants[0])
    assert T.init_opt_program(cfg, variants[1]) is program
    for v in variants:
        for num_steps in (3, 50):
            own = T.init_opt_state(T.optimisers(cfg, v, num_steps), v, params)
            assert jax.tree.structure(own) == jax.tree.structure(program(params))
            assert _leaves_equal(own, program(params))
    assert T.init_opt_program(cfg, T.Variant(dcc=False, rp=True, iiw=False)) is not program   # other heads


def test_every_seeds_rotation_pretraining_reuses_one_loss_object():
    """One loss object per modules: each seed's pretraining of the shared initial extractor reuses the first
    seed's compiled step (a new closure per seed traced and compiled it again)."""
    from modular.methods.compat.model import build_modules, make_rotation_loss
    assert make_rotation_loss(build_modules(TINY, 10, 10, 10)) is make_rotation_loss(build_modules(TINY, 10, 10, 10))
    assert make_rotation_loss(build_modules(TINY, 10, 10, 10)) is not make_rotation_loss(build_modules(TINY, 5, 5, 5))


def test_pretrained_variant_starts_both_extractors_from_the_given_weights():
    v = T.Variant(dcc=False, rp=False, iiw=True, pretrained=True, label="pretrained IIW")
    mods = T.modules_for(TINY, v, 10, 10, 10)
    other, _ = T.init_member(mods, T.Variant(dcc=False, rp=False, iiw=True), 7, (8, 8, 1))
    given = (other["tasks"]["a"]["extractor"], jax.tree.map(np.asarray, T.init_member(mods, v.program(False), 7,
                                                                                      (8, 8, 1))[1]["tasks"]["a"]["extractor"]))
    params, stats = T.init_member(mods, v, 0, (8, 8, 1), given)
    random_p, _ = T.init_member(mods, T.Variant(dcc=False, rp=False, iiw=True), 0, (8, 8, 1))
    for t in "ab":
        assert _leaves_equal(params["tasks"][t]["extractor"], given[0])
        assert _leaves_equal(stats["tasks"][t]["extractor"], given[1])
        assert _leaves_equal(params["tasks"][t]["head"], random_p["tasks"][t]["head"])  # heads: random IIW
    assert not _leaves_equal(random_p["tasks"]["a"]["extractor"], given[0])
    assert v.group_key() == T.Variant(dcc=False, rp=False, iiw=False).group_key()  # trains in the same program
    with pytest.raises(ValueError, match="IIW"):
        T.Variant(dcc=False, rp=True, iiw=False, pretrained=True)
    with pytest.raises(ValueError, match="pretrained"):
        T.init_member(mods, v, 0, (8, 8, 1))


def test_rp_fraction_one_rotates_every_image():
    x = np.random.default_rng(0).random((6, 8, 8, 1), np.float32)
    ids = np.array([0, 1, 2, 3, 5, 7], np.int32)
    out = np.asarray(C.model.apply_pretext(x, ids, "dihedral8"))
    for i, k in enumerate(ids):
        want = np.rot90(x[i], k % 4, axes=(0, 1))
        np.testing.assert_allclose(out[i], np.flip(want, axis=1) if k >= 4 else want)
    assert C.model.pretext_classes("dihedral8") == 8 and C.default_options().rp_fraction == 1.0
    # With rp_fraction 1.0 the RP loss sees the last image of the batch too; with 0.5 it does not.
    v = T.Variant(dcc=False, rp=True, iiw=False)
    batch = _batch(1)
    changed = dict(batch, image=batch["image"].copy())
    changed["image"][0, -1] = 1.0 - changed["image"][0, -1]
    for fraction, moves in ((1.0, True), (0.5, False)):
        mods, state = _group(v)
        rp = float(_step(mods, v, "a", rp_fraction=fraction)(state, batch)[1]["rp"][0])
        mods, state = _group(v)
        rp2 = float(_step(mods, v, "a", rp_fraction=fraction)(state, changed)[1]["rp"][0])
        assert (rp != rp2) == moves, fraction


def test_train_pair_is_the_studys_member():
    """One training implementation: a single pair (the tour, the head update) trains through the study's code, so
    it equals the study's member of the same setting, seed and data; following validation changes nothing."""
    ds = data.load("mnist5k", image_size=8, channels=1, seed=0, max_train=64)
    ocfg = common_config.optim_config(lr=1e-2)
    options = C.default_options()
    pair = C.train_pair(ds, ds, setting=(True, True, True), options=options, model_cfg=TINY, optim_cfg=ocfg,
                        num_steps=2, batch_size=8, seed=3, log=lambda m: None)
    model = ml_collections.ConfigDict(dict(TINY.to_dict(), split=options.split))
    trained = T.train_variants([T.Variant(dcc=True, rp=True, iiw=True)], {3: {"a": (ds, ds), "b": (ds, ds)}}, [3],
                               model_cfg=model, optim_cfg=ocfg, num_steps=2, batch_size=8, rp_fraction=1.0,
                               common=list(range(10)), num_classes=(10, 10), eval_steps=[1, 2], log=lambda m: None)
    member = trained["IIW+RP+DCC"].pair(3, 2)
    assert [c["step"] for c in trained["IIW+RP+DCC"].curves[3]] == [1, 2]
    assert _leaves_equal(pair.params, member.params) and _leaves_equal(pair.stats, member.stats)
    assert pair.setting == "IIW+RP+DCC" and pair.common == list(range(10))


def test_choose_steps_is_the_earliest_settled_point():
    curves = {"x": {1: 0.10, 2: 0.50, 3: 0.51, 4: 0.52}, "y": {1: 0.2, 2: 0.2, 3: 0.3, 4: 0.31}}
    assert C.study.choose_steps(curves, 0.03) == (3, "settled")
    assert C.study.choose_steps({"x": {1: 0.1, 2: 0.5}}, 0.03)[1] == "still moving at the last evaluated step"


def test_smoke_run_controls_plots_and_step_choice_without_test_data(tmp_path):
    """The smoke study end to end (same-data and pretrained-IIW controls, incremental, applications), then the same
    study with every test label shuffled: the same validation curves and step choice, other test numbers."""
    import json
    import os
    from experiments import run as cli
    config = compat_config.get_config("smoke")
    config.verbose = False
    cli.run(config, str(tmp_path))
    saved = json.load(open(tmp_path / "results.json"))
    names = set(saved["settings"])
    assert {"IIW+RP+DCC", "same data: IIW+RP+DCC", "IIW+RP+DCC, incremental", "pretrained IIW+RP+DCC",
            "IIW+RP, incremental"} <= names  # the b-then-a order: test_alternating_plan (the same code path)
    assert saved["paper_fig2"]["IIW+RP+DCC"] == 76.7 and saved["chance"] == pytest.approx(0.1)
    assert {"cka", "unit_correlation", "recombination_accuracy"} <= set(saved["settings"]["IIW+RP+DCC"])
    assert saved["readme_tables"]["compat"].count("\n") >= 5 and saved["claims"]
    for png in ("recombination_matrix.png", "recombination_curves.png"):
        assert os.path.exists(tmp_path / "plots" / png)
    apps = saved["applications"]
    assert apps["uda"]["frozen_parts_unchanged"] is True and len(apps["uda"]["per_seed"]) == len(saved["seeds"])
    ft = apps["fast_transfer"]
    assert ft["starts"] == ["IIW+RP", "reinit"]
    for start in ft["starts"]:
        run = ft["per_seed"][0][start]
        assert [e["epoch"] for e in run["test"]] == [0, 1] and run["lr"] in ft["lrs"]
        assert [e["epoch"] for e in run["validation_curve"]] == [0, 1]
    rows = apps["cross_arch"]["per_seed"][0]
    assert set(rows) == {"independent"} and all(0.0 <= v <= 1.0 for v in rows["independent"].values())
    assert {"transferred_bs", "own_b_stored", "reference_stored", "old_recombination"} <= set(rows["independent"])
    assert {"compat_uda", "compat_fast_transfer", "compat_cross_arch"} <= set(saved["readme_tables"])
    texts = [c["claim"] for c in saved["claims"]]
    assert any(t.startswith("Sec. 5.3") for t in texts) and any(t.startswith("Sec. 5.1") for t in texts)
    assert any("pretrained IIW" in t for t in texts)
    d = config.data
    sets = [data.load(n, image_size=d.image_size, channels=d.channels, seed=config.seed, max_train=d.max_train)
            for n in (d.task_a, d.task_b)]
    rng = np.random.default_rng(0)
    shuffled = [dataclasses.replace(ds, test_labels=rng.permutation(ds.test_labels)) for ds in sets]
    source = data.load(config.compat.pretrain_data, image_size=d.image_size, channels=d.channels, seed=config.seed,
                       max_train=d.max_train)
    again = C.study.run(*shuffled, config.compat, seeds=protocol.seeds(config), val_fraction=d.val_fraction,
                        model_cfg=config.model, optim_cfg=config.optim, num_steps=config.num_steps,
                        batch_size=config.batch_size, log=lambda m: None, pretrain_source=source)
    assert again["chosen_step"] == saved["chosen_step"]
    assert json.loads(json.dumps(again["curves"])) == saved["curves"]
    first = saved["per_seed"]["IIW+RP+DCC"][0]["recombination_accuracy"]
    assert again["per_seed"]["IIW+RP+DCC"][0]["recombination_accuracy"] != first  # the test set is read


def test_paper_optimiser_step_decay_and_l2():
    full = compat_config.get_config("full")
    assert full.optim.name == "adam" and full.optim.lr == 0.01 and full.optim.weight_decay == 1e-7
    # App. E: batch 512, 20k steps, the learning rate divided by 10 every 5k steps; Sec. 4: ResNet-56 split after
    # stage 2.
    assert (full.batch_size, full.num_steps, full.model.depth, full.compat.split) == (512, 20_000, 56, "stage2")
    lr = optim.schedule(full.optim, full.num_steps)  # the general 'step' schedule of modular.optim
    np.testing.assert_allclose([lr(0), lr(4999), lr(5000), lr(9999), lr(10_000), lr(14_999), lr(15_000), lr(19_999)],
                               [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5], rtol=1e-5)
    warm = optim.schedule(common_config.optim_config(lr=1.0, schedule="step", decay_at=(0.5,), decay_factor=0.5,
                                                     warmup_steps=10), 100)
    np.testing.assert_allclose([warm(0), warm(5), warm(10), warm(49), warm(50), warm(99)],
                               [0.0, 0.5, 1.0, 1.0, 0.5, 0.5], rtol=1e-6)
    for bad in (dict(decay_at=(1.5,)), dict(decay_factor=0.0)):
        with pytest.raises(ValueError, match="decay"):
            optim.schedule(common_config.optim_config(schedule="step", **bad), 100)
    # Every method's optimiser knows the schedule: modular.optim.build decays the same way.
    tx = optim.build(common_config.optim_config(name="sgd", lr=1.0, schedule="step", decay_at=(0.5,)), {"w": 0.0}, 4)
    state, moves = tx.init({"w": np.zeros((), np.float32)}), []   # float32, as JAX keeps it (no float64 warning)
    for _ in range(4):
        upd, state = tx.update({"w": np.ones((), np.float32)}, state)
        moves.append(float(-upd["w"]))
    np.testing.assert_allclose(moves, [1.0, 1.0, 0.1, 0.1], rtol=1e-6)
    tx = C.training.build_optimizer(common_config.optim_config(name="adam", lr=1.0, weight_decay=0.5,
                                                               schedule="constant"), 10)
    p = {"w": np.ones(3, np.float32)}
    upd, _ = tx.update({"w": np.zeros(3, np.float32)}, tx.init(p), p)
    assert np.all(np.asarray(upd["w"]) < 0)  # a zero loss gradient still decays the weights (L2)


def test_linear_cka_invariant_to_rotation_and_low_for_unrelated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert C.linear_cka(x, 3 * x @ q) == pytest.approx(1.0, abs=1e-9)
    assert C.linear_cka(x, rng.normal(size=(200, 16))) < 0.2
    assert C.unit_correlation(x, x) == pytest.approx(1.0)
    assert abs(C.unit_correlation(x, x @ q)) < 0.5


def test_study_loss_weights_reach_the_members():
    """compat.dcc_weight / rp_weight ride in each member's batch; a zero RP weight leaves the RP head untouched."""
    v = T.Variant(dcc=True, rp=True, iiw=False)
    ds = data.load("mnist5k", image_size=8, channels=1, seed=0, max_train=64)
    fit = [{"a": ds, "b": ds}, {"a": ds, "b": ds}]
    b = T.member_batches(fit, [0, 0], [v, T.Variant(dcc=False, rp=True, iiw=True)], "a", 0, 4,
                         dcc_weight=0.25, rp_weight=3.0)
    np.testing.assert_allclose(b["dcc_weight"], [0.25, 0.0])   # members without DCC: weight 0
    np.testing.assert_allclose(b["rp_weight"], [3.0, 3.0])
    assert T.member_batches(fit[:1], [0], [T.Variant(dcc=False, rp=False, iiw=False)], "a", 0, 4,
                            rp_weight=3.0)["rp_weight"][0] == 0.0
    mods, state = _group(v)
    before = T.unpack(state)[0]
    for weight, moves in ((0.0, False), (1.0, True)):
        _, state = _group(v)
        batch = dict(_batch(1), rp_weight=np.full((1,), weight, np.float32))
        after = T.unpack(_step(mods, v, "a")(state, batch)[0])[0]
        assert _leaves_equal(before["params"]["shared"]["rp"], after["params"]["shared"]["rp"]) != moves, weight


def test_study_uses_the_configured_weights_and_checks_the_target_before_training(monkeypatch):
    config = compat_config.get_config("smoke")
    config.compat.update(dict(dcc_weight=0.5, rp_weight=2.0))
    seen = {}

    def fake_train_variants(variants, split, seeds, **kw):
        seen.update(dcc_weight=kw["dcc_weight"], rp_weight=kw["rp_weight"])
        raise RuntimeError("stop")
    monkeypatch.setattr(C.training, "train_variants", fake_train_variants)
    ds = data.load("mnist5k", image_size=16, channels=1, seed=0, max_train=64)
    kw = dict(seeds=[0], val_fraction=0.2, model_cfg=config.model, optim_cfg=config.optim, num_steps=2, batch_size=4,
              log=lambda m: None)
    config.compat.update(dict(pretrained_settings=()))
    with pytest.raises(RuntimeError, match="stop"):
        C.study.run(ds, ds, config.compat, **kw)
    assert seen == dict(dcc_weight=0.5, rp_weight=2.0)
    # The config docstring's smaller study without its target: one sentence, before any training.
    seen.clear()
    config.compat.settings = ("independent", "RP")
    with pytest.raises(ValueError, match=r"must include the setting named by compat.dcc/rp/iiw \('IIW\+RP\+DCC'\)"):
        C.study.run(ds, ds, config.compat, **kw)
    assert not seen
    from experiments import compat as E
    with pytest.raises(ValueError, match="must include the setting"):
        E.run(config, "/nonexistent")   # before any data is loaded
    config.compat.update(dict(dcc=False, iiw=False))    # the docstring's fix: the target RP is among them
    C.study.check_target(config.compat)
    config.compat.settings = ("independent", "DCC+RP+IIW")
    config.compat.update(dict(dcc=True, iiw=True))
    C.study.check_target(config.compat)                 # any spelling of a setting names it
    config.compat.rp_weight = -1.0
    with pytest.raises(ValueError, match="rp_weight"):
        C.study.check_target(config.compat)


def test_pretraining_is_rotation_prediction_only():
    """Sec. 4: the pretrained extractor learns rotation prediction only: the labels change nothing."""
    from modular import rng as R
    from modular.methods.compat.model import build_modules, init_variables
    from modular.methods.compat.training import pretrain_extractor
    ds = data.load("mnist5k", image_size=8, channels=1, seed=0, max_train=64)
    kw = dict(num_steps=2, batch_size=8, optim_cfg=common_config.optim_config(lr=1e-2), seed=0)
    p1 = pretrain_extractor(TINY, ds, **kw)
    shuffled = dataclasses.replace(ds, train_labels=np.random.default_rng(0).permutation(ds.train_labels))
    p2 = pretrain_extractor(TINY, shuffled, **kw)
    assert _leaves_equal(p1, p2)
    init, _ = init_variables(build_modules(TINY, 10, 10, 10), R.key(0, "pretrain"), ds.image_shape,
                             identical_init=False)
    assert not _leaves_equal(p1[0], init["tasks"]["a"]["extractor"])   # it trained
