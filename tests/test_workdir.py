"""Workdirs that survive misuse: one sentence per bad input, a lock, divergence, Ctrl-C, a full disk, the
history of every attempt, and subtree files that refuse other weights. Config changes on resume:
test_workdir_resume.py."""
import json
import os
import signal
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import checkpoint, params as P, train
from modular import workdir as wd
from cli_helpers import ROOT, SHORT, cli, env, one_sentence, results, run_cli


@pytest.mark.parametrize("args, needles", [
    (["--config.nope=1"], ["Unknown config key 'nope'"]),
    (["--config.data.nope=3"], ["Unknown config key 'data.nope'"]),
    (["--config.num_steps=abc"], ["num_steps", "abc"]),
    (["--config=configs/nothere.py"], ["config file configs/nothere.py does not exist"]),
    (["--config=configs/pretrain.py:bogus"], ["Unknown config argument 'bogus'"]),
])
def test_bad_flags_are_one_sentence(tmp_path, args, needles):
    config = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "configs/pretrain.py:smoke")
    overrides = [a for a in args if not a.startswith("--config=")]
    one_sentence(run_cli(str(tmp_path / "w"), *overrides, config=config), *needles)
    assert not os.path.exists(tmp_path / "w")


def test_unusable_workdirs_are_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("x")
    one_sentence(run_cli(str(tmp_path / "afile")), "is a file, not a directory")
    one_sentence(run_cli("/proc/modular-test/run"), "Cannot create --workdir /proc/modular-test/run")


def test_busy_workdir_refuses_naming_the_holder(tmp_path):
    with wd.lock(str(tmp_path)):
        line = one_sentence(run_cli(str(tmp_path)), f"is in use by pid {os.getpid()} on host")
    assert "wait for that run to end" in line and not os.path.exists(tmp_path / "results.json")


def test_ctrl_c_exits_130_naming_the_last_checkpoint(tmp_path):
    p = subprocess.Popen(cli(str(tmp_path), "--config.checkpoint_every=10", "--config.log_every=10"), cwd=ROOT,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if "step 20/60" in line:
            p.send_signal(signal.SIGINT)
            break
    _, err = p.communicate(timeout=300)
    assert p.returncode == 130, err[-2000:]
    # (TensorFlow's C++ logging may print its one start-up line before ours)
    assert "Traceback" not in err and "failed" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted; last checkpoint: step") and "Run the same command to resume" in last
    proc = run_cli(str(tmp_path), "--config.checkpoint_every=10", "--config.log_every=10")
    assert proc.returncode == 0 and results(tmp_path)["resumed_from"] in (10, 20, 30), proc.stderr[-2000:]


def jumping_loss(params, model_state, batch, rng):
    loss = jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2) * batch["scale"][0]
    return loss, (model_state, {})


def test_divergence_stops_before_saving(tmp_path):
    def batch_fn(step):
        x = np.random.default_rng(step).normal(size=(8, 3)).astype(np.float32)
        return {"x": x, "y": x.sum(1, keepdims=True), "scale": np.full((8,), 1e6 if step >= 25 else 1.0, np.float32)}

    params = {"w": np.zeros((3, 1), np.float32)}
    cfg = common.optim_config(lr=0.01, schedule="constant")
    with pytest.raises(train.NonFiniteLossError, match="diverged.*Last good checkpoint: step 20"):
        train.train_subtrees(params, {}, loss_fn=jumping_loss, optim_cfg=cfg, batch_fn=batch_fn, num_steps=60,
                             workdir=str(tmp_path), checkpoint_every=10, log_every=10, verbose=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def test_subtree_files_refuse_other_weights_and_malformed_content(tmp_path):
    backbone = {"conv": {"kernel": np.ones((3, 3), np.float32)}}
    other = {"conv": {"kernel": np.zeros((3, 3), np.float32)}}
    path = str(tmp_path / "head.msgpack")
    checkpoint.export_subtree(path, {"w": np.ones(2, np.float32)}, backbone=backbone)
    assert checkpoint.import_subtree(path, backbone=backbone)[0]["w"].shape == (2,)
    with pytest.raises(checkpoint.CheckpointError, match="other weights of this backbone.*allow_other_weights"):
        checkpoint.import_subtree(path, backbone=other)
    assert checkpoint.import_subtree(path, backbone=other, allow_other_weights=True)[0]["w"].shape == (2,)
    from flax import serialization
    for bad in ({"format": checkpoint.SUBTREE_FORMAT}, {"format": checkpoint.SUBTREE_FORMAT, "tree": 3,
                                                        "backbone_hash": "x"}, [1, 2]):
        with open(path, "wb") as f:
            f.write(serialization.msgpack_serialize(bad))
        with pytest.raises(checkpoint.CheckpointError, match="is corrupt or not a modular subtree file"):
            checkpoint.import_subtree(path, backbone=backbone)
    with pytest.raises(P.SubtreeMismatchError, match="must be a mapping"):
        P.replace_subtree({"head": {"w": np.ones(2)}}, "head", np.ones(2))


def signal_at(workdir, progress: str, sig) -> int:
    """Run the smoke config on `workdir`, send `sig` when it prints `progress`; its exit code."""
    p = subprocess.Popen(cli(str(workdir), "--config.checkpoint_every=10", "--config.log_every=10"), cwd=ROOT,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if progress in line:
            p.send_signal(sig)
            break
    p.communicate(timeout=300)
    return p.returncode


def test_every_run_is_in_the_attempts_log(tmp_path):
    bad = run_cli(str(tmp_path), *SHORT, "--config.data.name=mnist6k")           # fails before training
    assert bad.returncode == 1
    attempts = json.loads((tmp_path / wd.ATTEMPTS_FILE).read_text())
    assert [a["status"] for a in attempts] == ["failed"] and "mnist6k" in attempts[0]["message"]
    signal_at(tmp_path, "step 20/60", signal.SIGKILL)
    assert signal_at(tmp_path, "step 40/60", signal.SIGINT) == 130
    proc = run_cli(str(tmp_path), "--config.checkpoint_every=10", "--config.log_every=10")
    assert proc.returncode == 0, proc.stderr[-2000:]
    statuses = [a["status"] for a in results(tmp_path)["attempts"]]
    assert statuses == ["failed", "killed", "interrupted", "finished"], statuses


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs, nearly full: where mounting is not allowed (no root, a container without the
    capability), the test is skipped with that reason."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    (mount / "filler").write_bytes(b"\0" * 1_350_000)   # room for one ~460 KB checkpoint, not two
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_disk_full_while_saving_is_one_sentence_and_resumes_from_the_intact_checkpoint(small_disk):
    workdir = small_disk / "w"
    args = ["--config.checkpoint_every=10", "--config.log_every=10"]
    proc = run_cli(str(workdir), *args)
    line = one_sentence(proc, "No space left on device", "training stopped", "Last intact checkpoint: step 10")
    assert line.startswith("error: [pretrain] saving a checkpoint to")
    (small_disk / "filler").unlink()
    proc = run_cli(str(workdir), *args)
    assert proc.returncode == 0 and "resuming from checkpoint step 10" in proc.stdout, proc.stderr[-2000:]
