"""Template mixtures: the experiment end to end on its smoke config (multi-task training, the transfer and
adaptation tables, claims, README tables and plots)."""
import os

from configs import templates as templates_config
from experiments import run as run_module


def test_smoke_multitask_end_to_end(tmp_path):
    config = templates_config.get_config("smoke")
    results = run_module.run(config, str(tmp_path))
    assert set(results["accuracy"]) == {"mnist5k", "mnist5k/invert"}
    assert all(0.0 <= a <= 1.0 for a in results["accuracy"].values())
    assert max(results["accuracy"].values()) > 0.15  # above chance (0.1) after 40 steps
    assert all(len(s) == config.model.depth for s in results["signature"].values())
    assert all(1 / config.model.num_templates - 1e-6 <= h <= 1 + 1e-6 for h in results["one_hotness"].values())
    counts = results["params"]
    assert counts["shared"] > counts["per_task"]["task0"] > 0
    assert "paper" in results
    # claims decided by the protocol (one smoke seed: no interval), tables for the README, heatmaps on disk
    claims = {c["claim"] for c in results["claims"]}
    assert any("one-hot" in c for c in claims) and any("Table 2" in c for c in claims)
    assert all(c["verdict"] == "inconclusive" for c in results["claims"] if c["kind"] != "not_testable")
    assert [c["claim"].split(":")[0] for c in results["claims"] if c["kind"] == "not_testable"] == ["Table 1", "Table 8"]
    assert {"templates", "templates_layers", "templates_signatures", "templates_transfer", "templates_adapt",
            "templates_adapt_claims"} <= set(results["readme_tables"])
    assert any(c.startswith("Table 3:") for c in claims) and len(results["adapt"]["per_seed"]) == 1
    assert any("plain multi-task baseline" in c for c in claims)      # Table 2's baseline ran (plain_bn_logits)
    assert "plain" in results["readme_tables"]["templates"].splitlines()[1]  # its source accuracies: a column
    assert len(results["per_seed"]) == config.seeds == 1
    assert set(results["per_seed"][0]) == {"seed", "regularised", "unregularised"}
    assert set(results["transfer"]["accuracy"]) == set(config.transfer_inits)
    assert len(results["plots"]) == 3 and all(p.endswith(".png") and os.path.exists(p) for p in results["plots"])
    assert os.path.exists(tmp_path / "results.json")
