"""What one train step costs, from the compiler: FLOPs, bytes per device, and the step's lowered module.

The step is the library's own (`train.make_train_step` on the supervised loss, the optimizer and the
stop-gradient mask built from the same rules as `train.train_subtrees`), traced on abstract arrays so
that nothing of the paper-sized model is allocated. Cost analysis is platform-dependent, so each number
says whose it is: FLOPs are XLA's count on the module lowered for TPU (`lowered.cost_analysis()`, before
backend passes; no TPU needed), bytes come from the program compiled for this host's CPU
(`compiled.memory_analysis()`: its temporaries are the activations kept for the backward pass plus
workspace, and an accelerator's fusion keeps a different set).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from modular import models, optim, supervised, train


FLOPS_PLATFORM = "tpu"  # whose lowered module is counted (cuda's gives the same count before its passes)


def _nbytes(tree) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _optim_cfg(optim_cfg, rules) -> ml_collections.ConfigDict:
    """`optim_cfg` (default: optim's) with `rules` training and everything else frozen, as train_subtrees does."""
    # The schedule only sets a scalar learning rate per step: a constant one costs the same (and methods
    # with their own schedules, e.g. compat's step decay, still project).
    optim_cfg = optim.override(optim_cfg or optim.default_config(), schedule="constant")
    if rules is None:
        return optim_cfg
    return optim.override(optim_cfg, lr_mults=[tuple(r) for r in rules], default_mult=0.0)


def build_model(model_cfg, num_classes: int, build=None):
    """`models.build(model_cfg, num_classes)`, or `build(model_cfg, num_classes)` for a network that
    models.build does not make (a phase's own `build`, e.g. compatible components' adapted extractors)."""
    return (build or models.build)(model_cfg, num_classes)


def train_step(model_cfg, *, num_classes: int, image_shape: tuple, batch_size: int,
               optim_cfg: ml_collections.ConfigDict | None = None, rules=None, num_steps: int = 1000,
               build=None):
    """(step, abstract args): the library's train step for `model_cfg` and its (state, batch, rng) shapes.

    rules: `[(regex, lr multiplier)]` with everything else frozen (as `train_subtrees(rules=...,
    default_mult=0)`); None trains every parameter with `optim_cfg`'s own rules. build: see `build_model`."""
    model = build_model(model_cfg, num_classes, build)
    optim_cfg = _optim_cfg(optim_cfg, rules)
    x = jax.ShapeDtypeStruct((batch_size,) + tuple(image_shape), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32))
    params, model_state = models.split_variables(variables)
    tx = optim.build(optim_cfg, params, num_steps)
    mask = optim.trainable_mask(params, optim_cfg)
    state = jax.eval_shape(lambda p, s: train.TrainState.create(p, s, tx), params, model_state)
    batch = {"image": x, "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return train.make_train_step(supervised.classification_loss(model), tx, mask), (state, batch, rng)


@dataclasses.dataclass(frozen=True)
class StepCost:
    """One train step of one device at `batch_size`, from XLA's analyses (see the module docstring)."""
    flops: float                 # per step, lowered for TPU (XLA's count: 2 per multiply-add, plus elementwise)
    cpu_compiled_flops: float | None  # the same step compiled for CPU (grouped convolutions expanded: larger)
    transcendentals: float
    bytes_accessed: float        # XLA's estimate of memory traffic (CPU fusion)
    param_bytes: int             # the parameters (what each data-parallel device holds in full)
    optimizer_bytes: int         # optimizer state (frozen subtrees keep none)
    model_state_bytes: int       # BatchNorm statistics
    temp_bytes: int | None       # XLA's temporaries: activations kept for the backward pass, workspace
    batch_bytes: int             # the input batch
    trainable: int               # parameters that train
    parameters: int

    @property
    def device_bytes(self) -> int:
        """Parameters + optimizer state + BN statistics + batch + temporaries (XLA's peak is no larger)."""
        return self.param_bytes + self.optimizer_bytes + self.model_state_bytes + self.batch_bytes + (self.temp_bytes or 0)


def _cost_dict(analysis) -> dict:
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per program
        analysis = analysis[0] if analysis else {}
    return dict(analysis or {})


def analyse(fn, *args, donate_argnums=(), platform: str = FLOPS_PLATFORM, compile: bool = True) -> tuple[dict, int]:
    """(XLA's cost analysis of `fn` lowered for `platform`, temporary bytes of `fn` compiled for this CPU).

    The FLOPs are counted on the module as lowered, before any backend's passes: XLA:CPU's compiler
    expands grouped (depthwise) convolutions into dense ones, which would count a 256-channel depthwise
    layer's gradient 80x over. `cpu_compiled_flops` in the result is that compiled count, for comparison.
    compile=False skips the CPU compile: no temporaries (None) and no compiled count."""
    traced = jax.jit(fn, donate_argnums=donate_argnums).trace(*args)
    cost = _cost_dict(traced.lower(lowering_platforms=(platform,)).cost_analysis())
    if not compile:  # the FLOPs only: lowering takes seconds, compiling a paper-sized step minutes
        cost["cpu_compiled_flops"] = None
        return cost, None
    compiled = traced.lower().compile()
    cost["cpu_compiled_flops"] = float(_cost_dict(compiled.cost_analysis()).get("flops", 0.0))
    memory = compiled.memory_analysis()
    return cost, int(getattr(memory, "temp_size_in_bytes", 0) or 0) if memory is not None else 0


def step_cost(model_cfg, *, num_classes: int, image_shape: tuple, batch_size: int,
              optim_cfg: ml_collections.ConfigDict | None = None, rules=None, compile: bool = True,
              build=None) -> StepCost:
    """Lower the train step for TPU and compile it for this host's CPU; XLA's FLOP count and memory sizes.
    compile=False: FLOPs and the state's bytes only (`temp_bytes` None). build: see `build_model`."""
    step, (state, batch, rng) = train_step(model_cfg, num_classes=num_classes, image_shape=image_shape,
                                           batch_size=batch_size, optim_cfg=optim_cfg, rules=rules, build=build)
    cost, temp = analyse(step, state, batch, rng, donate_argnums=(0,), compile=compile)
    mask = optim.trainable_mask(state.params, _optim_cfg(optim_cfg, rules))
    trainable = sum(math.prod(x.shape) for x, m in zip(jax.tree.leaves(state.params), jax.tree.leaves(mask)) if m)
    return StepCost(flops=float(cost.get("flops", 0.0)), cpu_compiled_flops=cost["cpu_compiled_flops"],
                    transcendentals=float(cost.get("transcendentals", 0.0)),
                    bytes_accessed=float(cost.get("bytes accessed", 0.0)), param_bytes=_nbytes(state.params),
                    optimizer_bytes=_nbytes(state.opt_state), model_state_bytes=_nbytes(state.model_state),
                    temp_bytes=temp, batch_bytes=_nbytes(batch), trainable=int(trainable),
                    parameters=int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))))
