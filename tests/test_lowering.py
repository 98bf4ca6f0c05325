"""What an accelerator would compile: every registered model's train step, lowered for cuda and tpu.

No accelerator is needed: `jax.jit(step).trace(...).lower(lowering_platforms=(platform,))` gives the module
that platform compiles. With the library's defaults and after `modular.platform.tune_cpu()`, depthwise layers
must reach the accelerator as XLA's grouped convolutions and no CPU kernel (its `while` loop) may be there.
"""
import re

import jax
import pytest

from modular import models, platform, projection, settings
from modular.models import depthwise as model_depthwise
from modular.platform import depthwise as cpu_depthwise
from modular.platform import host_memory, xla_cpu

# Small widths and depths: the structure of the lowered module is what is checked, not its size.
SMALL = {
    "resnet": dict(depth=8, width=4),
    "wrn": dict(depth=10, widen=1, width=4),
    "mobilenet_v2": dict(width=4, expansion=2),
    "vit": dict(depth=1, width=8, heads=2, patch=4),
    "isometric": dict(width=4, depth=2, num_templates=2, out_dim=8),
    "resnet_imagenet": dict(depth=18, width=4),
    "mobilenet_v2_imagenet": dict(width=4, expansion=2),
}
SMALL_DEFAULT = dict(width=4)  # a model registered after this file was written: its defaults, narrow
ACCELERATORS = ("cuda", "tpu")
IMAGE = (32, 32, 3)  # ImageNet-style stems downsample 32x


def depthwise_layers(name: str, cfg) -> int:
    """How many depthwise convolutions a forward pass of the model runs."""
    if name == "isometric":
        return int(cfg.depth)  # one per block, its kernel mixed from the templates
    model = models.build(cfg, 10)
    params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1,) + IMAGE, jax.numpy.float32))["params"]
    return sum(1 for x in jax.tree.leaves(params) if x.ndim == 4 and x.shape[2] == 1 and x.shape[3] > 1)


def grouped_convolutions(text: str) -> int:
    return sum(1 for g in re.findall(r"feature_group_count = (\d+)", text) if int(g) > 1)


def problems(text: str, expected_grouped: int) -> list:
    """Why a lowered module is not what an accelerator should run (empty when it is)."""
    found = []
    if "stablehlo.while" in text:
        found.append("a while loop (the CPU depthwise kernel's gradient)")
    if grouped_convolutions(text) < expected_grouped:
        found.append(f"{grouped_convolutions(text)} grouped convolutions for {expected_grouped} depthwise layers")
    return found


@pytest.fixture
def cpu_tuning(monkeypatch):
    """tune_cpu() for the test only: its process-wide allocator setting is skipped, its switches restored."""
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: [])
    monkeypatch.setattr(settings, "_default", settings.Settings())   # the switches off, restored afterwards
    monkeypatch.delenv(platform.OPT_OUT_ENV, raising=False)
    xla_cpu.compiler_options.cache_clear()
    yield platform.tune_cpu
    xla_cpu.compiler_options.cache_clear()


def _config(name):
    cfg = models.default_config(name)
    cfg.update(SMALL.get(name, SMALL_DEFAULT))
    return cfg


def _lower(cfg, platforms):
    step, args = projection.train_step(cfg, num_classes=10, image_shape=IMAGE, batch_size=4)
    traced = jax.jit(step).trace(*args)
    return {p: traced.lower(lowering_platforms=(p,)).as_text() for p in platforms}


@pytest.mark.parametrize("name", models.known_names())
def test_default_models_lower_to_native_kernels(name):
    cfg = _config(name)
    expected = depthwise_layers(name, cfg)
    for target, text in _lower(cfg, ACCELERATORS).items():
        assert problems(text, expected) == [], (name, target)


@pytest.mark.parametrize("name", models.known_names())
def test_cpu_tuned_models_still_lower_to_native_kernels_off_cpu(name, cpu_tuning):
    assert cpu_tuning(), "tune_cpu() applied nothing"
    cfg = _config(name)
    expected = depthwise_layers(name, cfg)
    lowered = _lower(cfg, ("cpu",) + ACCELERATORS)
    if expected:  # the CPU kernel is really on: the check below would see it if it leaked
        assert "stablehlo.while" in lowered["cpu"] and grouped_convolutions(lowered["cpu"]) == 0
    for target in ACCELERATORS:
        assert problems(lowered[target], expected) == [], (name, target)


def test_the_check_catches_a_cpu_kernel_on_every_platform(monkeypatch):
    # If depthwise_conv ran the CPU kernel everywhere, the accelerator's module would show it.
    monkeypatch.setattr(model_depthwise, "depthwise_conv", lambda x, k, stride=1: cpu_depthwise.depthwise_conv(x, k, stride))
    monkeypatch.setattr("modular.models.layers.depthwise_conv", model_depthwise.depthwise_conv)
    cfg = _config("mobilenet_v2")
    expected = depthwise_layers("mobilenet_v2", cfg)
    text = _lower(cfg, ("cuda",))["cuda"]
    assert len(problems(text, expected)) == 2
