"""TensorBoard scalars without TensorFlow: TensorBoard reads what we write, and training imports no TensorFlow."""
import os
import subprocess
import sys

import pytest

from modular import scalars

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensorboard_reads_the_scalars_back(tmp_path):
    writer = scalars.ScalarWriter(str(tmp_path / "logs"))
    writer.write_scalars(10, {"pretrain/loss": 0.5, "pretrain/steps_per_sec": 12.0})
    writer.write_scalars(20, {"pretrain/loss": 0.25})
    writer.close()
    writer.close()   # closing twice (an abort after the end) is harmless
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "logs"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["pretrain/loss", "pretrain/steps_per_sec"]
    assert [(e.step, e.value) for e in events.Scalars("pretrain/loss")] == [(10, 0.5), (20, 0.25)]


TRAIN_WITH_A_WORKDIR = """
import sys
import jax.numpy as jnp
from configs import common
from modular import optim, train
params = {"w": jnp.zeros((3,))}
tx = optim.build(common.optim_config(lr=0.1), params, 4)
loss = lambda p, s, b, r: (jnp.sum((p["w"] - b["y"]) ** 2), (s, {}))
train.fit(state=train.TrainState.create(params, {}, tx), loss_fn=loss, tx=tx, num_steps=4, log_every=2,
          batch_fn=lambda step: {"y": jnp.ones((3,))}, workdir=sys.argv[1], verbose=False)
assert "tensorflow" not in sys.modules, "training with a workdir imported TensorFlow"
"""


@pytest.mark.e2e   # a subprocess that trains: ~20 s
def test_training_with_a_workdir_imports_no_tensorflow(tmp_path):
    # importing TensorFlow took 5-14 s of CPU in every CLI process (clu's writers)
    proc = subprocess.run([sys.executable, "-c", TRAIN_WITH_A_WORKDIR, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))
