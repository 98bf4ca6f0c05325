"""The projection's numbers: XLA's FLOP count against an analytic one, bytes and hours that add up."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest

from configs import common
from experiments import project as project_cmd
from modular import projection
from modular.projection import costs, phases

WIDTHS = (256, 512, 256, 10)
BATCH = 128


def test_flops_of_a_dense_train_step_match_the_analytic_count():
    # Forward 2*B*in*out per layer; backward twice that (input and weight gradients), except that the first
    # layer's input gradient is not needed: 6*B*sum(in*out) - 2*B*in0*out0. Elementwise work (ReLU, softmax,
    # SGD update) is the small rest.
    shapes = list(zip(WIDTHS[:-1], WIDTHS[1:]))
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    x = jax.ShapeDtypeStruct((BATCH, WIDTHS[0]), jnp.float32)
    y = jax.ShapeDtypeStruct((BATCH,), jnp.int32)

    def step(params, x, y):
        def loss(params):
            h = x
            for i, w in enumerate(params):
                h = h @ w if i == len(params) - 1 else jax.nn.relu(h @ w)
            return optax.softmax_cross_entropy_with_integer_labels(h, y).mean()
        grads = jax.grad(loss)(params)
        return [w - 0.1 * g for w, g in zip(params, grads)]

    cost, temp = costs.analyse(step, params, x, y)
    analytic = 6 * BATCH * sum(a * b for a, b in shapes) - 2 * BATCH * shapes[0][0] * shapes[0][1]
    assert analytic <= cost["flops"] <= 1.03 * analytic, (cost["flops"], analytic)
    assert temp > 0


def test_depthwise_gradients_count_as_grouped_convolutions():
    # Forward, input gradient and kernel gradient: three grouped convolutions of 2*B*H*W*k*k*C each (less the
    # zero padding's border taps). XLA:CPU's compiled count expands them into dense convolutions.
    from modular.models.depthwise import grouped_conv
    b, h, c = 4, 16, 64
    x = jax.ShapeDtypeStruct((b, h, h, c), jnp.float32)
    k = jax.ShapeDtypeStruct((3, 3, c), jnp.float32)
    cost, _ = costs.analyse(jax.grad(lambda x, k: jnp.sum(grouped_conv(x, k) ** 2), argnums=(0, 1)), x, k)
    analytic = 3 * 2 * b * h * h * 9 * c
    assert 0.85 * analytic <= cost["flops"] <= 1.05 * analytic, (cost["flops"], analytic)
    assert cost["cpu_compiled_flops"] > 2 * cost["flops"]


def test_a_phase_costs_what_its_model_step_costs():
    cfg = common.model_config("resnet", depth=8, width=4)
    full = costs.step_cost(cfg, num_classes=10, image_shape=(8, 8, 3), batch_size=8)
    head = costs.step_cost(cfg, num_classes=10, image_shape=(8, 8, 3), batch_size=8, rules=[("head/.*", 1.0)])
    assert head.flops < full.flops                                 # a frozen trunk computes no weight gradients
    assert head.trainable < full.trainable == full.parameters
    assert head.optimizer_bytes < full.optimizer_bytes             # frozen subtrees keep no optimizer state
    assert full.param_bytes == 4 * full.parameters
    assert full.device_bytes > full.param_bytes + full.optimizer_bytes


def test_projected_hours_are_flops_over_utilised_peak():
    seconds = projection.projected_seconds(275e12 * 0.4 * 3600, "TPU v4", mfu=0.4)
    assert seconds == pytest.approx(3600)
    assert projection.projected_seconds(1e15, "A100", dtype="bfloat16") < projection.projected_seconds(1e15, "A100")
    with pytest.raises(ValueError, match="Unknown accelerator"):
        projection.peak_flops("abacus")


LOAD_CONFIG = project_cmd.load_config


def _tiny_pretrain():
    config = LOAD_CONFIG("configs/pretrain.py:full")
    config.model = common.model_config("resnet", depth=8, width=4)
    config.data.image_size = 8
    config.batch_size, config.num_steps = 8, 1000
    return config


def test_project_sums_phases():
    config = _tiny_pretrain()
    report = projection.project(config, progress=lambda _: None)
    (row,) = report["phases"]
    assert report["total_flops"] == pytest.approx(row["gflops_per_step"] * 1e9 * 1000)
    assert report["projected_hours"]["TPU v4"] == pytest.approx(report["total_flops"] / (275e12 * 0.4) / 3600)


@pytest.mark.parametrize("name", project_cmd.FULL_CONFIGS)
def test_every_full_config_has_phases(name):
    config = project_cmd.load_config(f"configs/{name}.py:full")
    found = phases.phases(config)
    if name == "adapt" and config.method == "head2toe":
        assert found == []
    else:
        assert found and all(p.steps > 0 and p.batch_size > 0 and p.num_classes > 1 for p in found)


def test_the_core_imports_no_paper():
    # Each experiment declares its phases next to its run (experiments/NAME.py); the core finds them by name.
    code = ("import sys, modular.projection; "
            "print(sorted(m for m in sys.modules if m.startswith(('modular.methods', 'experiments'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    config = LOAD_CONFIG("configs/adapt.py:full")
    from experiments import adapt
    assert phases.phases(config) == adapt.phases(config) and phases.uncounted(config) == adapt.UNCOUNTED
    config.experiment = "predict"   # a command, not an experiment: it declares no phases
    with pytest.raises(ValueError, match="knows no experiment 'predict'"):
        phases.phases(config)


def test_the_command_writes_a_readme_table(tmp_path, monkeypatch):
    monkeypatch.setattr(project_cmd, "load_config", lambda spec: _tiny_pretrain())
    assert project_cmd.main(["--config=configs/pretrain.py:full", f"--workdir={tmp_path}"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert "configs/pretrain.py:full" in results["readme_tables"]["scale"]
    assert results["projections"]["configs/pretrain.py:full"]["total_flops"] > 0


def _steps(found, prefix):
    """{phase name: (model, classes, steps, repeats, trains everything)} of the phases starting with `prefix`."""
    return {p.name: (p.model.get("name"), p.num_classes, p.steps, p.repeats, p.rules is None)
            for p in found if p.name.startswith(prefix)}


def test_compat_counts_its_applications_and_pretrained_extractor():
    config = LOAD_CONFIG("configs/compat.py:full")
    found = phases.phases(config)
    # 8 settings + upper bound + harder pretext + 3 same-data pairs (independent, RP, IIW+RP+DCC) + 2 incremental
    # orders of the chosen setting + the 2 RP-only incremental pairs fast transfer reuses; two networks each
    (pairs,) = [p for p in found if p.name.startswith("network pairs")]
    assert (pairs.steps, pairs.repeats) == (20_000, 2 * 17)
    assert config.batch_size == 512 and config.model.depth == 56   # App. E: ResNet-56, batch 512
    # fast transfer: (2 pairs + re-initialised head) x 2 rates, 3 epochs of (5000 - 500 validation) // 512 steps
    assert _steps(found, "fast transfer") == {"fast transfer (3 starts x 2 rates)": ("resnet", 10, 3 * 8, 6, True)}
    # cross-architecture: independent and RP+DCC pairs on 5 classes for num_steps, new heads for num_steps / 10
    assert _steps(found, "cross-arch") == {
        "cross-arch network a, old classes": ("resnet", 5, 20_000, 2, True),
        "cross-arch new head on frozen a": ("resnet", 10, 2_000, 2, False),
        "cross-arch network b (wrn), old classes": ("wrn", 5, 20_000, 2, True),
        "cross-arch new head on frozen b (wrn)": ("wrn", 10, 2_000, 2, False)}
    # both cross-architecture extractors feed heads of a's architecture through a 1x1 adapter
    assert {(p.model.head_model.name, p.model.adapter_width) for p in found if p.name.startswith("cross")} == {
        ("resnet", 64)}
    assert not _steps(found, "pretrained")  # :full has no pretraining data
    config.compat.update(dict(pretrain_data="mnist5k/invert", applications=()))
    found = phases.phases(config)
    assert [(p.name, p.steps, p.repeats) for p in found] == [
        ("pretrained-IIW extractor on mnist5k/invert", 200, 1),
        ("network pairs a, b (17 pairs)", 20_000, 34)]  # + 2 pretrained-IIW pairs, - the fast-transfer pairs


def test_templates_adapt_counts_m3sda_passes():
    config = LOAD_CONFIG("configs/templates.py:full")
    config.mode, config.m3sda.generator_steps = "adapt", 2
    found = phases.phases(config)
    # moment matching, adversarial and the supervised upper bound: transfer_steps each; M3SDA: 5000 // 3
    # iterations of step A and 2 C steps (xi), and one B step (classifiers only)
    assert _steps(found, "mixture") == {"mixture weights on the target": ("isometric", 10, 5_000, 3, False)}
    assert _steps(found, "M3SDA") == {"M3SDA steps A + 2 x C (xi)": ("isometric", 10, 1_666 * 3, 1, False),
                                      "M3SDA step B (classifiers)": ("isometric", 10, 1_666, 1, False)}
    config.adapt_methods = ["moment_matching"]
    assert not _steps(phases.phases(config), "M3SDA")
