"""Workdirs on resume: a changed config is refused naming the differing keys unless allowed (then recorded),
a finished run re-reports its history, and a deleted or corrupt config.json never disables the check."""
import json

from modular import workdir as wd
from cli_helpers import SHORT, one_sentence, results, run_cli


def test_config_changes_on_resume_and_history_of_attempts(tmp_path):
    short = ["--config.num_steps=4", "--config.log_every=2", "--config.checkpoint_every=2"]
    assert run_cli(str(tmp_path), *short).returncode == 0
    first = results(tmp_path)
    # Same config again: a finished run re-reports its whole history, and the attempt is logged.
    assert run_cli(str(tmp_path), *short).returncode == 0
    again = results(tmp_path)
    assert [h["step"] for h in again["history"]] == [h["step"] for h in first["history"]] == [2, 4]
    assert len(again["attempts"]) == 2 and again["attempts"][1]["config_changes"] == []
    # Another config: refused with the differing keys, nothing touched.
    line = one_sentence(run_cli(str(tmp_path), *short, "--config.optim.lr=1000000.0"), "optim.lr: 0.01 -> 1000000.0",
                        "--config.resume_changed=True")
    assert "num_steps" not in line and results(tmp_path) == again
    # A failing run (even when allowed to change the config) leaves config.json describing the checkpoints.
    record = (tmp_path / "config.json").read_text()
    one_sentence(run_cli(str(tmp_path), *short, "--config.resume_changed=True", "--config.data.name=mnist6k"),
                 "mnist6k")
    assert (tmp_path / "config.json").read_text() == record
    # Allowed: the run continues and results.json records what changed.
    proc = run_cli(str(tmp_path), "--config.num_steps=6", "--config.log_every=2", "--config.checkpoint_every=2",
                   "--config.resume_changed=True")
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = results(tmp_path)
    assert r["resumed_from"] == 4 and [h["step"] for h in r["history"]] == [2, 4, 6]
    assert r["attempts"][-1]["config_changes"] == ["num_steps: 4 -> 6"]
    assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 6


def test_deleted_or_corrupt_config_json_never_disables_the_config_check(tmp_path):
    assert run_cli(str(tmp_path), *SHORT).returncode == 0
    (tmp_path / "config.json").unlink()            # the record beside it still says what the checkpoints are
    one_sentence(run_cli(str(tmp_path), *SHORT, "--config.optim.lr=0.05"), "optim.lr: 0.01 -> 0.05")
    (tmp_path / "config.json").write_text("{not json")
    assert run_cli(str(tmp_path), *SHORT).returncode == 0      # same config: resumes, records restored
    assert json.loads((tmp_path / "config.json").read_text())["num_steps"] == 4
    for name in ("config.json", wd.RECORD_FILE):      # both gone: checkpoints are not resumed blindly
        (tmp_path / name).unlink()
    line = one_sentence(run_cli(str(tmp_path), *SHORT, "--config.optim.lr=0.05"), "config record",
                        "missing or unreadable", "--config.resume_changed=True")
    assert "choose another --workdir" in line
    proc = run_cli(str(tmp_path), "--config.num_steps=6", "--config.log_every=2", "--config.checkpoint_every=2",
                   "--config.resume_changed=True")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results(tmp_path)["attempts"][-1]["config_changes"] == [wd.UNVERIFIED]
