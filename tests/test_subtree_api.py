"""The newcomer's misuses of the subtree API: each is now correct or one sentence, never a silent wrong run.

1. a learning-rate rule that matches no parameter; 2. the model state passed as `variables["batch_stats"]`;
3. a frozen extractor's BatchNorm statistics; 4. swapping parameters without their statistics;
5. a wrong `loss_fn`; 6. list-valued config keys from the command line (tests/test_cli_overrides.py)."""
import jax
import numpy as np
import pytest

from modular import data, loss_contract, models, optim, supervised, train
from modular import params as P

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def setup():
    cfg = models.default_config("resnet")
    cfg.width = 4
    model = models.build(cfg, num_classes=10)
    variables = models.init(model, jax.random.key(0), (1, 8, 8, 1))
    rng = np.random.default_rng(0)
    images = rng.random((64, 8, 8, 1), np.float32)
    labels = rng.integers(0, 10, 64)
    return model, variables, (lambda step: data.batch_at(images, labels, step, 16, 0))


def _train(setup, rules, model_state=None, **kw):
    model, variables, batch_fn = setup
    params, state = models.split_variables(variables)
    return train.train_subtrees(params, state if model_state is None else model_state,
                                loss_fn=supervised.classification_loss(model), optim_cfg=optim.default_config(),
                                rules=rules, default_mult=0.0, batch_fn=batch_fn, num_steps=2, verbose=False, **kw)


@pytest.mark.parametrize("rule, hint", [("heads/.*", "'head/.*'"), ("/head/.*", "no leading '/'")])
def test_rule_matching_nothing_is_one_sentence(setup, rule, hint):
    with pytest.raises(ValueError, match="matches no parameter") as e:
        _train(setup, [(rule, 1.0)])
    assert rule in str(e.value) and hint in str(e.value) and "\n" not in str(e.value)


def test_training_nothing_is_an_error(setup):
    with pytest.raises(ValueError, match="no parameter trains"):
        _train(setup, [("head/.*", 0.0)])


def test_model_state_of_the_wrong_structure_is_one_sentence(setup):
    _, variables, _ = setup
    with pytest.raises(ValueError, match=r"top-level keys .*'batch_stats'.* but was given .*'extractor'") as e:
        _train(setup, [("head/.*", 1.0)], model_state=variables["batch_stats"])
    assert "split_variables" in str(e.value)


def test_frozen_extractor_keeps_its_statistics_and_the_head_trains(setup):
    _, variables, _ = setup
    trained = _train(setup, [("head/.*", 1.0)])
    before, after = P.flatten(variables["batch_stats"]), P.flatten(trained.model_state["batch_stats"])
    extractor = [p for p in before if p.startswith("extractor/")]
    assert extractor and all(np.array_equal(before[p], after[p]) for p in extractor)
    moved = _train(setup, [("head/.*", 1.0)], update_frozen_stats=True)
    moved_flat = P.flatten(moved.model_state["batch_stats"])
    assert any(not np.array_equal(before[p], moved_flat[p]) for p in extractor)
    assert not np.array_equal(P.flatten(variables["params"])["head/classifier/kernel"],
                              trained.params["head"]["classifier"]["kernel"])


def test_statistics_update_where_their_module_trains(setup):
    _, variables, _ = setup
    params, state = models.split_variables(variables)
    cfg = optim.override(optim.default_config(), lr_mults=[(".*/bn[^/]*/(scale|bias)", 1.0)], default_mult=0.0)
    mask = P.flatten(optim.stats_update_mask(params, state, cfg))
    assert mask and all(mask.values())   # every BN trains its scale and bias: every statistic updates
    frozen = optim.override(cfg, lr_mults=[("head/.*", 1.0)])
    assert not any(P.flatten(optim.stats_update_mask(params, state, frozen)).values())
    table = optim.stats_table(state, optim.stats_update_mask(params, state, frozen))
    assert "frozen" in table and "updates" not in table.split("totals")[0]


def test_swap_variables_moves_parameters_and_statistics_together(setup):
    model, variables, _ = setup
    other = models.init(model, jax.random.key(1), (1, 8, 8, 1))
    other = dict(other, batch_stats=jax.tree.map(lambda s: s + 1.0, other["batch_stats"]))
    swapped = P.swap_variables(variables, other, "extractor")
    for collection in ("params", "batch_stats"):
        got, want = P.flatten(swapped[collection]), P.flatten(other[collection])
        assert all(np.array_equal(got[p], want[p]) for p in got if p.startswith("extractor/"))
        mine = P.flatten(variables[collection])
        assert all(np.array_equal(got[p], mine[p]) for p in got if p.startswith("head/"))
    with pytest.raises(P.SubtreeMismatchError, match="replace them together"):
        P.replace_variables(variables, "extractor", {"params": other["params"]["extractor"]})


def _scalar(params):
    return 0.0 * jax.tree.leaves(params)[0].sum()


@pytest.mark.parametrize("bad_loss, needle", [
    (lambda params, batch: 0.0, "cannot be called as"),
    (lambda params, state, batch, rng: _scalar(params), "returned an array; expected"),
    (lambda params, state, batch, rng: (_scalar(params), state), "returned (array, dict); expected"),
])
def test_wrong_loss_fn_is_one_sentence(setup, bad_loss, needle):
    _, variables, batch_fn = setup
    params, state = models.split_variables(variables)
    with pytest.raises(loss_contract.LossContractError) as e:
        train.train_subtrees(params, state, loss_fn=bad_loss, optim_cfg=optim.default_config(),
                             rules=[("head/.*", 1.0)], default_mult=0.0, batch_fn=batch_fn, num_steps=1, verbose=False)
    assert needle in str(e.value) and loss_contract.SIGNATURE in str(e.value), str(e.value)


def test_split_variables_names_what_it_wants(setup):
    _, variables, _ = setup
    params, state = models.split_variables(variables)
    assert set(state) == {"batch_stats"} and params is variables["params"]
    with pytest.raises(ValueError, match="split_variables takes a model's variables"):
        models.split_variables(variables["batch_stats"])
