"""Model patches: the experiment end to end on its smoke config (every table, plot and claim; test labels
never reach selection) and its one-sentence refusal of a target equal to the source."""
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from modular import protocol


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
