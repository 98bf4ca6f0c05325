"""benchmarks.accelerator trains both networks through the library's step and reports finite, positive numbers."""
import functools
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from benchmarks import accelerator
from cli_helpers import ROOT, env
from modular import models

@pytest.mark.e2e   # compiles two train steps: about 40 s of CPU
def test_tiny_run_reports_every_field_and_mfu_from_the_given_peak(tmp_path):
    """The command as a user runs it (its own process: absl's flags are global, and other tests' modules
    define required flags of their own)."""
    out = tmp_path / "accelerator.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--tiny", "--image_size=32",
                           "--batch_size=2", "--steps=2", "--warmup=1", "--peak_tflops=0.5", f"--out={out}"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout
    result = json.loads(out.read_text())
    assert result["peak_flops_per_chip"] == 0.5e12 and result["peak_from"] == "--peak_tflops"
    assert [r["model"] for r in result["rows"]] == ["resnet50", "vit_b16"]
    for row in result["rows"]:
        assert row["dtype"] == "bfloat16" and row["batch"] == 2 * result["devices"]
        for key in ("images_per_s", "step_ms", "compile_s", "lower_s", "tflop_per_step", "achieved_tflops", "mfu",
                    "final_loss"):
            assert math.isfinite(row[key]) and row[key] > 0, (row["model"], key, row[key])
        assert row["compile_s"] > row["lower_s"]
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / (0.5 * result["devices"]))
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["step_ms"] / 1e3))
    assert "| model | device | batch | images/s | step ms | compile s | TFLOP/step | MFU |" in printed
    assert printed.count("%") >= 4   # MFU in each model's line and table row


@pytest.mark.unit
def test_peak_from_the_device_kind_and_unknown_devices():
    bf16 = accelerator.peak("NVIDIA H100 80GB HBM3", "bfloat16")[0]
    assert bf16 == 989e12 and accelerator.peak("NVIDIA H200", "bfloat16")[0] == bf16
    assert accelerator.peak("NVIDIA H100 80GB HBM3", "float32")[0] == 495e12
    assert accelerator.accelerator_of("TPU v4") == "TPU v4"
    assert accelerator.accelerator_of("NVIDIA A100-SXM4-80GB") == "A100"
    for kind in ("cpu", "TPU v5 lite", "NVIDIA H100 PCIe"):
        value, words = accelerator.peak(kind, "bfloat16")
        assert value is None and "--peak_tflops" in words
    assert accelerator.peak("cpu", "bfloat16", 2.0) == (2e12, "--peak_tflops")
    row = dict(label="m", batch=2, batch_per_device=2, devices=1, image_size=32, dtype="bfloat16", images_per_s=1.0,
               step_ms=2.0, compile_s=3.0, tflop_per_step=1e-6, achieved_tflops=5e-4, mfu=None)
    assert "MFU -" in accelerator.line(row, "unknown") and accelerator.table([row], "cpu x1").endswith("| - |")


@pytest.mark.unit
def test_full_size_configs_are_resnet50_and_vit_b16():
    resnet, vit = accelerator.model_config("resnet50", "bfloat16"), accelerator.model_config("vit_b16", "bfloat16")
    assert (resnet.name, resnet.depth, resnet.width, resnet.dtype) == ("resnet_imagenet", 50, 64, "bfloat16")
    assert (vit.width, vit.depth, vit.heads, vit.mlp_ratio, vit.patch) == (768, 12, 12, 4, 16)
    # The published sizes at 224 px and 1000 classes (traced, nothing allocated): torchvision's ResNet-50, and
    # ViT-B/16's 86,567,656 less the class token and its position (this ViT pools the tokens' mean).
    for name, count in (("resnet50", 25_557_032), ("vit_b16", 86_567_656 - 2 * 768)):
        model = models.build(accelerator.model_config(name, "bfloat16"), accelerator.NUM_CLASSES)
        variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                                   jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
        assert sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"])) == count, name
