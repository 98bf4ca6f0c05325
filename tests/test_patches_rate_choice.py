"""Model patches: every multi-task and multi-resolution row chooses its learning rate on validation data,
never on test labels."""
import dataclasses

import numpy as np
import pytest

from modular import data
from modular.methods import patches
from modular.methods.patches import multires
from patches_helpers import CFG, OPTIM, tiny_source


@pytest.fixture(scope="module")
def tiny():
    return tiny_source()


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
