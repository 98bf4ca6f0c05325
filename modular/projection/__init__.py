"""Paper scale on paper: what each `:full` config costs, from the compiler, and how long it would take.

    report = projection.project(config)          # phases, FLOPs, bytes per device, projected hours
    python -m experiments.project --config=configs/NAME.py:full [--out=FILE] [--mfu=0.4] [--devices=1]

Each training phase's train step is lowered and compiled on this host (`costs.step_cost`); its FLOPs times the
phase's steps and repeats, summed and times the seeds an experiment compares over, give the config's
training FLOPs, and those over an accelerator's peak times the utilisation (model FLOPs utilisation, MFU)
give the projected wall time. The peaks are the vendors' dense per-chip numbers for the precision the step
runs in: bfloat16 models at the bfloat16 peak; float32 models at the rate JAX's default matmul precision
gives (one bfloat16 pass on TPU, TF32 on A100/H100).
"""
from __future__ import annotations

import dataclasses

from modular.projection import costs, phases
from modular.projection.costs import StepCost, step_cost, train_step
from modular.projection.phases import Phase

# Dense peak FLOP/s per chip: {dtype of the model: peak under JAX's default precision}.
ACCELERATORS = {
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "H100 SXM": {"bfloat16": 989e12, "float32": 495e12},
}
DEFAULT_MFU = 0.4


def peak_flops(accelerator: str, dtype: str = "float32") -> float:
    if accelerator not in ACCELERATORS:
        raise ValueError(f"Unknown accelerator {accelerator!r}; known: {', '.join(ACCELERATORS)}.")
    return ACCELERATORS[accelerator]["bfloat16" if str(dtype) == "bfloat16" else "float32"]


def projected_seconds(flops: float, accelerator: str, *, mfu: float = DEFAULT_MFU, devices: int = 1,
                      dtype: str = "float32") -> float:
    """Wall time of `flops` on `devices` chips running at `mfu` of their peak."""
    if not 0.0 < mfu <= 1.0:
        raise ValueError(f"The utilisation (MFU) must be in (0, 1]; got {mfu}.")
    return flops / (peak_flops(accelerator, dtype) * mfu * devices)


def _dtype(config) -> str:
    return str(config.get("dtype") or config.model.get("dtype") or "float32")


def project(config, *, mfu: float = DEFAULT_MFU, devices: int = 1, progress=print) -> dict:
    """Phases, per-step costs and projected hours of `config` (one device holds batch/devices examples)."""
    if int(devices) < 1:
        raise ValueError(f"devices must be a positive integer; got {devices}.")
    dtype, compiled, temporaries, rows = _dtype(config), {}, {}, []
    seeds = phases.seed_count(config)
    for phase in phases.phases(config):
        per_device = -(-phase.batch_size // devices)
        shape_key = (repr(sorted(phase.model.to_dict().items())), phase.build, phase.image_shape, per_device,
                     phase.rules)
        key = shape_key + (phase.num_classes,)
        if key not in compiled:
            # Phases that differ only in their class count share the first one's compiled temporaries.
            known = temporaries.get(shape_key)
            progress(f"[project] {'lowering' if known else 'compiling'} {phase.name}: {phase.model.get('name')} "
                     f"at batch {per_device}, {'x'.join(map(str, phase.image_shape))}")
            cost = step_cost(phase.model, num_classes=phase.num_classes, image_shape=phase.image_shape,
                             batch_size=per_device, optim_cfg=config.get("optim"),
                             rules=list(phase.rules) if phase.rules else None, compile=known is None,
                             build=phase.build)
            if known is None:
                temporaries[shape_key] = cost
            else:
                cost = dataclasses.replace(cost, temp_bytes=known.temp_bytes)
            compiled[key] = cost
        cost = compiled[key]
        total = cost.flops * devices * phase.steps * phase.repeats * seeds
        rows.append(dict(phase=phase.name, model=phase.model.get("name"), image=list(phase.image_shape),
                         batch=phase.batch_size, steps=phase.steps, repeats=phase.repeats,
                         trainable=cost.trainable, parameters=cost.parameters,
                         gflops_per_step=cost.flops * devices / 1e9, total_flops=total,
                         cpu_compiled_gflops_per_step=None if cost.cpu_compiled_flops is None
                         else cost.cpu_compiled_flops * devices / 1e9,
                         device_bytes=dict(params=cost.param_bytes, optimizer=cost.optimizer_bytes,
                                           model_state=cost.model_state_bytes, batch=cost.batch_bytes,
                                           temporaries=cost.temp_bytes, total=cost.device_bytes)))
    total = sum(r["total_flops"] for r in rows)
    peak_bytes = max((r["device_bytes"]["total"] for r in rows), default=0)
    hours = {a: projected_seconds(total, a, mfu=mfu, devices=devices, dtype=dtype) / 3600 for a in ACCELERATORS}
    return dict(experiment=config.experiment, dtype=dtype, mfu=mfu, devices=devices, seeds=seeds, phases=rows,
                total_flops=total, peak_device_bytes=peak_bytes, projected_hours=hours,
                uncounted=phases.uncounted(config),
                flops_from=f"XLA cost analysis of the train step lowered for {costs.FLOPS_PLATFORM} "
                           f"(before backend passes)",
                bytes_from="parameters, optimizer state, BN statistics and batch from their shapes; temporaries "
                           "(activations, workspace) from XLA:CPU's compiled program")


__all__ = ["ACCELERATORS", "DEFAULT_MFU", "Phase", "StepCost", "costs", "peak_flops", "phases", "project",
           "projected_seconds", "step_cost", "train_step"]
