"""The tour end to end at smoke scale: every method on the leaderboard, the patch bank, mixed-task serving."""
import json
import os

import numpy as np
import pytest

from configs import tour as tour_config
from experiments import run as runner
from experiments import tour


@pytest.mark.e2e
def test_smoke_tour_end_to_end(tmp_path):
    config = tour_config.get_config("smoke")
    results = runner.run(config, str(tmp_path))
    for key in ("leaderboard", "accuracy", "targets", "bank", "mixed_batch_serving", "compat", "plots"):
        assert key in results, key
    assert results["targets"] == list(config.data.targets)
    rows = {r["method"]: r for r in results["leaderboard"]}
    assert set(rows) == set(tour_config.METHODS) == set(results["accuracy"])
    for method, row in rows.items():
        assert 0.0 <= results["accuracy"][method] <= 1.0
        assert all(0.0 <= row[t] <= 100.0 for t in results["targets"])
        assert row["trainable_per_task"] > 0 and row["adapt_seconds_per_task"] > 0
    assert rows["linear"]["trainable_per_task"] < rows["sb_patch"]["trainable_per_task"] \
        < rows["full_finetune"]["trainable_per_task"]
    assert rows["sb_patch"]["stored_params_per_task"] < rows["full_finetune"]["stored_params_per_task"]
    assert rows["sb_patch"]["stored_bytes_per_task"] < rows["full_finetune"]["stored_bytes_per_task"]

    bank = results["bank"]
    assert bank["num_files"] == len(tour_config.METHODS) * len(config.data.targets)
    for rel, size in bank["files"].items():
        assert os.path.getsize(tmp_path / rel) == size > 0
    for method, summary in bank["per_method"].items():
        if method != "full_finetune":  # a full fine-tune's "patch" is the whole model
            assert summary["bytes"] < summary["k_full_models_bytes"], method
            assert all(size < summary["full_model_bytes"] for rel, size in bank["files"].items()
                       if rel.startswith(f"bank/{method}/"))
    assert bank["total_bytes"] < bank["k_full_models_bytes"]

    # The bank's patch and Head2Toe files serve through the predictor, exactly as the tour measured them.
    from modular import data, predict
    predictor = predict.BankPredictor(str(tmp_path))
    assert len(predictor.tasks) == 4 * len(config.data.targets)           # mixture weights: own backbone
    for method in ("sb_patch", "head2toe"):
        target = config.data.targets[0]
        ds = data.vtab_like.load_task(target, image_size=config.data.image_size, channels=config.data.channels,
                                      seed=config.seed, max_train=config.data.max_train_target,
                                      max_test=config.data.max_test_target, source=config.data.name)
        labels = predictor.predict(f"{method}:{target}", ds.test_images)
        assert np.mean(labels == ds.test_labels) == pytest.approx(results["per_target"][method][target])

    served = results["mixed_batch_serving"]
    assert served["batch"] == len(config.data.targets) * served["examples_per_task"]
    assert served["max_abs_diff_vs_per_task_calls"] < 1e-3
    assert served["backbone_frozen_in_every_patch"]

    compat = results["compat"]["recombination_accuracy"]
    assert set(compat) == set(config.compat.settings)
    assert all(0.0 <= a <= 1.0 for a in compat.values())
    assert all(os.path.exists(p) for p in results["plots"]) and results["plots"]
    assert json.load(open(tmp_path / "results.json"))["leaderboard"]


def test_unknown_method_is_one_sentence(tmp_path):
    config = tour_config.get_config("smoke")
    config.methods = ["linear", "prompt_tuning"]
    with pytest.raises(ValueError, match="Unknown or no tour method"):
        tour.run(config, str(tmp_path))
