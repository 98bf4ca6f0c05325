"""End-to-end through the CLI: smoke run, bad input, kill-and-resume, 8 devices and 2 processes = 1."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from cli_helpers import ROOT, cli, env, results, run_cli


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted 1-device smoke run that the other runs must reproduce."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    proc = run_cli(workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results(workdir)


def test_smoke_run_writes_contract_files(reference, tmp_path):
    assert 0.0 <= reference["accuracy"] <= 1.0
    assert reference["accuracy"] > 0.5  # 60 steps on 512 digits: far above chance (0.1)


def test_contract_files_present(tmp_path):
    proc = run_cli(str(tmp_path), "--config.num_steps=4", "--config.log_every=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = os.listdir(tmp_path)
    assert {"results.json", "config.json"} <= set(files)
    assert json.load(open(tmp_path / "config.json"))["num_steps"] == 4
    events = [f for _, _, fs in os.walk(tmp_path) for f in fs if "tfevents" in f]
    assert events, "no TensorBoard event files"
    assert os.path.isdir(tmp_path / "pretrain" / "checkpoints" / "4")


def test_unknown_dataset_is_one_sentence(tmp_path):
    proc = run_cli(str(tmp_path), "--config.data.name=mnist6k")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "mnist6k" in last and "mnist5k" in last
    assert "Traceback" not in proc.stderr


def test_unknown_config_key_is_reported(tmp_path):
    proc = run_cli(str(tmp_path), "--config.num_stepz=3")
    assert proc.returncode != 0 and "num_stepz" in proc.stderr


def test_sigkill_and_resume_ends_like_uninterrupted(reference, tmp_path):
    args = ["--config.checkpoint_every=10", "--config.log_every=10"]
    p = subprocess.Popen(cli(str(tmp_path), *args), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if "step 40/60" in line:
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=300)
    assert p.returncode == -signal.SIGKILL, "run finished before it could be killed"
    assert not os.path.exists(tmp_path / "results.json")
    proc = run_cli(str(tmp_path), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = results(tmp_path)
    assert resumed["resumed_from"] in (10, 20, 30, 40)
    assert resumed["accuracy"] == reference["accuracy"]
    assert resumed["history"][-1]["loss"] == pytest.approx(reference["history"][-1]["loss"], rel=1e-6)


# Parallel runs are compared step by step over a few steps: the losses must agree to float rounding.
# (Over a long run, reduction-order rounding is amplified by training itself, so a final-loss comparison
# would test chaos, not correctness; a per-device BatchNorm or a wrong data slice differs at step 1.)
SHORT = ["--config.num_steps=4", "--config.log_every=1", "--config.checkpoint_every=2"]


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("short_reference"))
    proc = run_cli(workdir, *SHORT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return results(workdir)


def assert_same_trajectory(r, ref):
    assert [h["step"] for h in r["history"]] == [1, 2, 3, 4]
    for h, h_ref in zip(r["history"], ref["history"]):
        assert h["loss"] == pytest.approx(h_ref["loss"], rel=1e-4)
        assert h["accuracy"] == h_ref["accuracy"]


def test_eight_devices_equal_one(short_reference, tmp_path):
    proc = run_cli(str(tmp_path), *SHORT, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(tmp_path)
    assert r["devices"].startswith("8 x cpu")
    assert_same_trajectory(r, short_reference)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(short_reference, tmp_path):
    port = free_port()
    procs = [subprocess.Popen(cli(str(tmp_path), *SHORT), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env(MODULAR_COORDINATOR=f"127.0.0.1:{port}", MODULAR_NUM_PROCESSES="2",
                                                 MODULAR_PROCESS_ID=str(i)))
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outs)
    r = results(tmp_path)
    assert r["devices"] == "2 x cpu in 2 process(es)"
    assert_same_trajectory(r, short_reference)
