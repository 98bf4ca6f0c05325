"""Training speed and MFU of ResNet-50 and ViT-B/16 on this machine's accelerators, through the library's own step.

  python -m benchmarks.accelerator [--models=resnet50,vit_b16] [--batch_size=N (per device)] [--image_size=224]
      [--steps=50] [--warmup=10] [--dtype=bfloat16] [--optimizer=adam] [--peak_tflops=X] [--out=FILE.json] [--tiny]

Each model is the registry's (`models.build`: `resnet_imagenet` depth 50 width 64; `vit` width 768, depth 12,
12 heads, MLP ratio 4, 16x16 patches, the tokens' mean pooled: the registry's default; its class-token pooling
'tok' does not trace on `parallel.make_mesh()`'s explicitly sharded mesh yet), trained with `train.make_train_step` and `optim.build` on
one synthetic batch generated on the devices (the input pipeline is not measured), data-parallel over every
device as `train.fit` runs it (`modular.parallel`: the batch split along the mesh, the state replicated).
Printed per model: the batch, images/s and step time in the steady state (after `--warmup` steps, `--steps`
steps timed up to `jax.block_until_ready`), the seconds to trace, lower and compile the step (apart), the
model FLOPs of one step from XLA's cost analysis of the lowered step (before the backend's passes, the whole
global batch; `modular.methods.head2toe.costs.program_flops`), and MFU = those FLOPs per second over the
devices' peak. The peak comes from `modular.projection.ACCELERATORS` by the device kind, or `--peak_tflops`
(per chip); on a device the table does not know (a CPU) MFU prints as '-'. `--tiny` shrinks both networks
(ResNet-18 layout at width 8, a 2-block ViT of width 32 on 8x8 patches) for a quick check on a CPU.
"""
from __future__ import annotations

import functools
import json
import math
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from modular import models, optim, parallel, projection, supervised, train
from modular.methods.head2toe import costs as head2toe_costs
from modular.platform import xla_cpu
from modular.projection import costs as projection_costs

NUM_CLASSES = 1000
# name -> (model config over the registry's defaults, --tiny overrides, default batch per device)
MODELS = {
    "resnet50": (dict(name="resnet_imagenet", depth=50, width=64), dict(depth=18, width=8), 128),
    "vit_b16": (dict(name="vit", width=768, depth=12, heads=12, mlp_ratio=4, patch=16),
                dict(width=32, depth=2, heads=2, mlp_ratio=2, patch=8), 64),
}
DTYPES = ("bfloat16", "float32")

_MODELS = flags.DEFINE_list("models", list(MODELS), f"Models to train, of: {', '.join(MODELS)}.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Examples per device per step (default: "
                              + ", ".join(f"{k} {v[2]}" for k, v in MODELS.items()) + ").")
_IMAGE = flags.DEFINE_integer("image_size", 224, "Height and width of the synthetic images.")
_STEPS = flags.DEFINE_integer("steps", 50, "Steps timed, after the warmup.")
_WARMUP = flags.DEFINE_integer("warmup", 10, "Steps run (and waited for) before timing, after compiling.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", DTYPES, "Activations and matmuls (the model config's `dtype`; "
                           "parameters and optimizer state stay float32). Also picks the peak.")
_OPTIMIZER = flags.DEFINE_enum("optimizer", optim.default_config().name, ["adam", "adamw", "sgd", "momentum"],
                               "The optimizer (modular.optim), at the library's default settings otherwise.")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Dense peak TFLOP/s of one chip at --dtype (overrides the table).")
_OUT = flags.DEFINE_string("out", "", "Also write the measurements as JSON to this file.")
_TINY = flags.DEFINE_boolean("tiny", False, "Shrink both networks to check the benchmark on a CPU in seconds.")


def accelerator_of(device_kind: str) -> str | None:
    """The `projection.ACCELERATORS` key of a `jax.Device.device_kind`, or None when the table has no entry."""
    kind = device_kind.upper()
    if kind.startswith("TPU V4"):
        return "TPU v4"
    if "A100" in kind:
        return "A100"
    # The H100 SXM (HBM3) and the H200 are one GH100 die at the same clocks: 989 TFLOP/s dense bfloat16.
    # The PCIe and NVL H100 run lower clocks; the table has no number for them.
    if ("H100" in kind and ("HBM3" in kind or "SXM" in kind)) or "H200" in kind:
        return "H100 SXM"
    return None


def peak(device_kind: str, dtype: str, peak_tflops: float | None = None) -> tuple[float | None, str]:
    """(dense peak FLOP/s of one chip or None, where it came from, in words)."""
    if peak_tflops is not None:
        if not peak_tflops > 0:
            raise ValueError(f"--peak_tflops must be positive; got {peak_tflops}.")
        return peak_tflops * 1e12, "--peak_tflops"
    key = accelerator_of(device_kind)
    if key is None:
        return None, (f"unknown for {device_kind!r} (modular.projection.ACCELERATORS knows "
                      f"{', '.join(projection.ACCELERATORS)}; pass --peak_tflops)")
    return projection.peak_flops(key, dtype), f"modular.projection.ACCELERATORS[{key!r}][{dtype!r}]"


def model_config(name: str, dtype: str, tiny: bool = False):
    if name not in MODELS:
        raise ValueError(f"Unknown benchmark model {name!r}; known: {', '.join(MODELS)}.")
    base, small, _ = MODELS[name]
    cfg = models.default_config(base["name"])
    cfg.update({**base, **(small if tiny else {}), "dtype": dtype})
    return cfg


def synthetic_batch(mesh, global_batch: int, image_size: int, seed: int = 0) -> dict:
    """Uniform images in [0, 1] and labels, generated on the devices already split along the mesh."""
    @functools.partial(jax.jit, out_shardings=parallel.data_sharding(mesh))
    def make(key):
        images, labels = jax.random.split(key)
        return dict(image=jax.random.uniform(images, (global_batch, image_size, image_size, 3), jnp.float32),
                    label=jax.random.randint(labels, (global_batch,), 0, NUM_CLASSES, jnp.int32))
    return parallel.shard_batch(make(jax.random.key(seed, impl="unsafe_rbg")), mesh)   # already split: passes through


def measure(name: str, *, batch_size: int, image_size: int, steps: int, warmup: int, dtype: str,
            optimizer: str, tiny: bool, peak_per_chip: float | None) -> dict:
    """Compile and time `name`'s train step; one row of the report."""
    mesh = parallel.make_mesh()
    devices = jax.device_count()
    global_batch = batch_size * devices
    cfg = model_config(name, dtype, tiny)
    model = models.build(cfg, NUM_CLASSES)
    # Random-bit-generator keys for the initial weights and the data: values nobody reads, and XLA:CPU compiles
    # the ResNet's initialisers 6x faster than with the default threefry keys.
    params, model_state = models.split_variables(
        models.init(model, jax.random.key(0, impl="unsafe_rbg"), (1, image_size, image_size, 3)))
    optim_cfg = optim.override(optim.default_config(), name=optimizer)
    tx = optim.build(optim_cfg, params, warmup + steps + 1)
    # The optimizer state made in one program (not leaf by leaf), replicated over the mesh as train.fit's is.
    state = jax.jit(lambda p, s: train.TrainState.create(p, s, tx),
                    out_shardings=parallel.replicated(mesh))(params, model_state)
    parameters = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    del params, model_state
    batch = synthetic_batch(mesh, global_batch, image_size)
    rng = jax.device_put(jax.random.key(1), parallel.replicated(mesh))
    jitted = xla_cpu.jit(train.make_train_step(supervised.classification_loss(model), tx), donate_argnums=(0,))

    start = time.perf_counter()
    lowered = jitted.lower(state, batch, rng)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    flops = head2toe_costs.program_flops(jitted, state, batch, rng)          # model FLOPs, the global batch
    compiled_flops = projection_costs._cost_dict(compiled.cost_analysis()).get("flops")  # per device, after passes

    metrics = None
    for _ in range(warmup):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, rng)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t) / steps
    loss = float(parallel.to_host(metrics["loss"]))
    if not math.isfinite(loss):
        raise FloatingPointError(f"{name}: the loss became {loss} on the synthetic batch.")
    achieved = flops / step_s
    stats = jax.devices()[0].memory_stats() or {}
    return dict(model=name, label=f"{name} (tiny)" if tiny else name, tiny=tiny,
                config={k: str(v) for k, v in cfg.items()}, parameters=int(parameters),
                devices=devices, batch_per_device=batch_size, batch=global_batch, image_size=image_size,
                dtype=dtype, optimizer=optimizer, warmup=warmup, steps=steps,
                images_per_s=global_batch / step_s, step_ms=1e3 * step_s,
                lower_s=lowered_at - start, compile_s=compiled_at - start,
                tflop_per_step=flops / 1e12,
                compiled_tflop_per_step_per_device=None if compiled_flops is None else float(compiled_flops) / 1e12,
                achieved_tflops=achieved / 1e12,
                mfu=None if peak_per_chip is None else achieved / (peak_per_chip * devices),
                final_loss=loss, peak_device_bytes=stats.get("peak_bytes_in_use"))


def line(row: dict, peak_words: str) -> str:
    mfu = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
    return (f"{row['label']}: batch {row['batch']} ({row['batch_per_device']}/device x{row['devices']}), "
            f"{row['image_size']}px {row['dtype']}: {row['images_per_s']:.1f} images/s, {row['step_ms']:.2f} ms/step, "
            f"compile {row['compile_s']:.1f} s, {row['tflop_per_step']:.4g} TFLOP/step, "
            f"{row['achieved_tflops']:.4g} TFLOP/s, MFU {mfu} (peak {peak_words})")


def table(rows: list[dict], device: str) -> str:
    out = ["| model | device | batch | images/s | step ms | compile s | TFLOP/step | MFU |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        out.append(f"| {r['label']} | {device} | {r['batch']} | {r['images_per_s']:.1f} | {r['step_ms']:.2f} | "
                   f"{r['compile_s']:.1f} | {r['tflop_per_step']:.4g} | {mfu} |")
    return "\n".join(out)


def run() -> dict:
    """Measure the models the flags name; print a line each and the table; the measurements (also to --out)."""
    names = [n.strip() for n in _MODELS.value if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise app.UsageError(f"--models: unknown {', '.join(unknown) or '(none given)'}; known: {', '.join(MODELS)}.")
    for flag in (_STEPS, _IMAGE):
        if flag.value < 1:
            raise app.UsageError(f"--{flag.name} must be at least 1; got {flag.value}.")
    if _WARMUP.value < 0 or (_BATCH.value is not None and _BATCH.value < 1):
        raise app.UsageError("--warmup must be >= 0 and --batch_size >= 1.")
    device = jax.devices()[0]
    peak_per_chip, peak_from = peak(device.device_kind, _DTYPE.value, _PEAK.value)
    peak_words = "unknown" if peak_per_chip is None else f"{peak_per_chip / 1e12:g} TFLOP/s per chip"
    print(f"device: {device.device_kind} x{jax.device_count()} ({jax.default_backend()}), jax {jax.__version__}; "
          f"peak {peak_words}: {peak_from}", flush=True)
    rows = []
    for name in names:
        row = measure(name, batch_size=_BATCH.value or MODELS[name][2], image_size=_IMAGE.value,
                      steps=_STEPS.value, warmup=_WARMUP.value, dtype=_DTYPE.value, optimizer=_OPTIMIZER.value,
                      tiny=_TINY.value, peak_per_chip=peak_per_chip)
        print(line(row, peak_words), flush=True)
        rows.append(row)
    label = f"{device.device_kind} x{jax.device_count()}"
    print("\n" + table(rows, label), flush=True)
    result = dict(device_kind=device.device_kind, backend=jax.default_backend(), devices=jax.device_count(),
                  jax=jax.__version__, peak_flops_per_chip=peak_per_chip, peak_from=peak_from, tiny=_TINY.value,
                  flops_from="XLA cost analysis of the lowered train step (model FLOPs of the global batch)",
                  rows=rows)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}.")
    run()


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    app.run(main)
