"""M3SDA's two-classifier discrepancy (Peng et al. 2019, after Saito et al.'s MCD 2018) for unsupervised adaptation.

Two classifiers F1, F2 read the same pooled features. Every iteration runs M3SDA's three steps on one batch:
  A. both classifiers minimise the source cross-entropy, and the tuned feature parameters the moment distance
     between source and target features (M3SDA's step 1: classification plus moment matching);
  B. the classifiers, features fixed, maximise their discrepancy on target images while keeping the source
     cross-entropy low (so they disagree where the target leaves the source's support);
  C. the features, classifiers fixed, minimise that discrepancy, `generator_steps` times.
Here the source features come from the frozen source model (templates and the source's xi never move), so
'the features' are only what the rules let tune on the target side: the target task's mixture weights xi
(or a plain net's input adapter). F1 is the target task's own head (the one evaluated afterwards), F2 a
perturbed copy of it under `second_classifier/...`. Each group has its own optimizer, stepped only in the
steps that train it, so Adam's moments and step count never move a group during another group's step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import compiled, optim, train
from modular.platform import xla_cpu

SECOND = "second_classifier"   # F2: [D, classes] kernel and bias, beside the network's own trees


@dataclasses.dataclass(frozen=True)
class M3SDA:
    """Settings: C-step repeats per iteration (MCD's n), the moment distance's weight in step A, the
    classifiers' learning-rate multiple and F2's initial perturbation (relative to F1's kernel's std)."""
    generator_steps: int = 4
    moment_weight: float = 1.0
    classifier_lr_mult: float = 1.0
    second_init_noise: float = 0.1

    def iterations(self, feature_updates: int) -> int:
        """Iterations that give the tuned features `feature_updates` optimizer steps (A once, C n times each),
        the budget every other method gets."""
        return max(1, int(feature_updates) // (1 + int(self.generator_steps)))


def classifier_discrepancy(logits_a: jax.Array, logits_b: jax.Array) -> jax.Array:
    """Mean absolute difference of two classifiers' class probabilities over batch and classes (MCD's d)."""
    return jnp.mean(jnp.abs(jax.nn.softmax(logits_a, -1) - jax.nn.softmax(logits_b, -1)))


def head_rule(task: str) -> str:
    """Path regex of the classifiers: the task's head (F1) and the second classifier (F2)."""
    return rf"(tasks/{task}/head|{SECOND})/.*"


def add_second_classifier(params: Mapping, task: str, key: jax.Array, noise: float = 0.1) -> dict:
    """params with F2 = `task`'s head plus Gaussian noise of `noise` x the kernel's std (both then train on
    the source in step A; identical heads would have a zero discrepancy and zero gradient in step B)."""
    head = params["tasks"][task]["head"]
    kernel = jnp.asarray(head["kernel"])
    scale = noise * jnp.std(kernel)
    return dict(params, **{SECOND: dict(kernel=kernel + scale * jax.random.normal(key, kernel.shape),
                                        bias=jnp.asarray(head["bias"]))})


def _classify(head: Mapping, features: jax.Array) -> jax.Array:
    return features @ head["kernel"] + head["bias"]


def _restricted(params, mask):
    """params with the leaves outside `mask` behind stop_gradient (no gradient is computed for them)."""
    return jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)


def step_objectives(target_fn: Callable, distance: Callable, task: str, moment_weight: float, mask_classifiers,
                    mask_features) -> dict[str, Callable]:
    """M3SDA's three objectives {'A', 'B', 'C'}, each f(params, batch_stats, src, labels, batch) -> (loss,
    (batch_stats, metrics)) with gradients only for the group its step trains (the rest behind stop_gradient):
    A (classifiers and features): source cross-entropy of F1 and F2 + moment_weight x moment distance;
    B (classifiers): source cross-entropy - target discrepancy;  C (features): target discrepancy.
    src are the (constant) source features, target_fn(params, batch_stats, batch) -> (features, batch_stats)."""
    both = jax.tree.map(lambda a, b: bool(a or b), mask_classifiers, mask_features)
    w = float(moment_weight)

    def terms(params, stats, src, labels, batch, mask):
        params = _restricted(params, mask)
        tgt, stats = target_fn(params, stats, batch)
        f1, f2 = params["tasks"][task]["head"], params[SECOND]
        ce = sum(optax.softmax_cross_entropy_with_integer_labels(_classify(h, src), labels).mean() for h in (f1, f2))
        disc = classifier_discrepancy(_classify(f1, tgt), _classify(f2, tgt))
        return ce, disc, distance(src, tgt), stats

    def step_a(params, stats, src, labels, batch):
        ce, _, md, stats = terms(params, stats, src, labels, batch, both)
        return ce + w * md, (stats, dict(moment_distance=md))

    def step_b(params, stats, src, labels, batch):
        ce, disc, _, stats = terms(params, stats, src, labels, batch, mask_classifiers)
        return ce - disc, (stats, dict(source_ce=ce, discrepancy_max=disc))

    def step_c(params, stats, src, labels, batch):
        _, disc, _, stats = terms(params, stats, src, labels, batch, mask_features)
        return disc, (stats, dict(discrepancy=disc))

    return dict(A=step_a, B=step_b, C=step_c)


def make_step(source_fn: Callable, target_fn: Callable, distance: Callable, task: str, settings: M3SDA,
              tx_classifiers: optax.GradientTransformation, mask_classifiers,
              tx_features: optax.GradientTransformation, mask_features):
    """One M3SDA iteration (steps A, B, then C `generator_steps` times) as a train.fit step_fn.

    source_fn(params, batch) -> source features (frozen model); target_fn(params, batch_stats, batch) ->
    (target features, new batch_stats); distance(src, tgt) the moment distance. opt_state holds
    {'classifiers', 'features'}: each optimizer (built to update only its group) runs only in its steps."""
    objectives = step_objectives(target_fn, distance, task, settings.moment_weight, mask_classifiers, mask_features)
    step_a, step_b, step_c = objectives["A"], objectives["B"], objectives["C"]

    def step(state: train.TrainState, batch, rng):
        del rng
        params, stats, opt = state.params, state.model_state, dict(state.opt_state)
        src = jax.lax.stop_gradient(source_fn(params, batch))
        labels = batch["source"]["label"]
        # A: classifiers on source labels, features towards the source moments
        (_, (stats, m_a)), g_a = jax.value_and_grad(step_a, has_aux=True)(params, stats, src, labels, batch)
        u_c, opt["classifiers"] = tx_classifiers.update(g_a, opt["classifiers"], params)
        u_f, opt["features"] = tx_features.update(g_a, opt["features"], params)
        params = optax.apply_updates(optax.apply_updates(params, u_c), u_f)
        # B: classifiers apart on the target
        (_, (stats, m_b)), g_b = jax.value_and_grad(step_b, has_aux=True)(params, stats, src, labels, batch)
        u_c, opt["classifiers"] = tx_classifiers.update(g_b, opt["classifiers"], params)
        params = optax.apply_updates(params, u_c)

        # C: features towards agreement, n times
        def generator_step(_, carry):
            params, stats, opt_f, _, _ = carry
            (_, (stats, m_c)), g_c = jax.value_and_grad(step_c, has_aux=True)(params, stats, src, labels, batch)
            u_f, opt_f = tx_features.update(g_c, opt_f, params)
            return optax.apply_updates(params, u_f), stats, opt_f, m_c["discrepancy"], optax.global_norm(g_c)

        zero = jnp.zeros((), jnp.float32)
        params, stats, opt["features"], disc, g_norm = jax.lax.fori_loop(
            0, int(settings.generator_steps), generator_step, (params, stats, opt["features"], zero, zero))
        metrics = dict(m_a, **m_b, discrepancy=disc, loss=m_b["source_ce"] + disc,
                       grad_norm=optax.global_norm((g_a, g_b)) + g_norm)
        return state.replace(step=state.step + 1, params=params, model_state=stats, opt_state=opt), metrics

    return step


_COMPILED = compiled.ProgramCache(maxsize=16)


def _compiled(source_fn, target_fn, distance, task: str, tunable: str, tunable_mult: float, settings: M3SDA,
              optim_cfg: ml_collections.ConfigDict, params, num_iterations: int):
    """(optimizers, masks, jitted step), reused by later calls with equal arguments and tree shapes. (The
    optimizers are returned for their `init`, so the key keeps the rate and length they start from.)"""
    key = (source_fn, target_fn, distance, task, tunable, float(tunable_mult), settings,
           compiled.config_key(optim_cfg), int(num_iterations), compiled.tree_signature(params))

    def build():
        n = int(settings.generator_steps)
        cfg_c = optim.override(optim_cfg, lr_mults=[(head_rule(task), float(settings.classifier_lr_mult))],
                               default_mult=0.0)
        cfg_f = optim.override(optim_cfg, lr_mults=[(tunable, float(tunable_mult))], default_mult=0.0)
        # each optimizer's schedule spans the steps it actually takes: A and B for the classifiers, A and n C's
        tx_c, mask_c = optim.build(cfg_c, params, 2 * num_iterations), optim.trainable_mask(params, cfg_c)
        tx_f, mask_f = optim.build(cfg_f, params, (1 + n) * num_iterations), optim.trainable_mask(params, cfg_f)
        overlap = [a and b for a, b in zip(jax.tree.leaves(mask_c), jax.tree.leaves(mask_f))]
        if any(overlap) or not any(jax.tree.leaves(mask_f)):
            raise ValueError(f"The tuned parameters {tunable!r} must match some parameters and none of the "
                             "classifiers.")
        step = xla_cpu.jit(make_step(source_fn, target_fn, distance, task, settings, tx_c, mask_c, tx_f, mask_f),
                           donate_argnums=(0,))
        return (tx_c, tx_f), (mask_c, mask_f), step

    return _COMPILED.get(key, build)


def fit(params, batch_stats, *, source_fn: Callable, target_fn: Callable, distance: Callable, task: str,
        tunable: str, tunable_mult: float, settings: M3SDA, optim_cfg: ml_collections.ConfigDict,
        batch_fn: Callable, num_iterations: int, seed: int = 0, name: str = "m3sda", workdir: str | None = None,
        checkpoint_every: int = 0, log_every: int = 50, verbose: bool = True) -> train.Trained:
    """Run `num_iterations` M3SDA iterations on `params` (which must hold F2, see `add_second_classifier`)
    through train.fit (checkpoints, resumption, NaN and divergence guards); batches are {'source': {'image',
    'label'}, 'target': {'image'}}. Only `tunable` (at `tunable_mult`), F1 and F2 change."""
    if SECOND not in params:
        raise ValueError(f"M3SDA needs a second classifier under '{SECOND}' (see add_second_classifier).")
    if int(settings.generator_steps) < 1:
        raise ValueError(f"M3SDA needs at least one feature step per iteration, got {settings.generator_steps}.")
    (tx_c, tx_f), (mask_c, mask_f), step = _compiled(source_fn, target_fn, distance, task, tunable, tunable_mult,
                                                     settings, optim_cfg, params, num_iterations)
    opt_state = dict(classifiers=tx_c.init(params), features=tx_f.init(params))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=batch_stats,
                             opt_state=opt_state)
    # step_fn is the whole iteration, so train.fit never builds a step from loss_fn/tx
    result = train.fit(state=state, loss_fn=None, tx=None, batch_fn=batch_fn, num_steps=num_iterations, seed=seed,
                       workdir=workdir, checkpoint_every=checkpoint_every, log_every=log_every, name=name,
                       verbose=verbose, step_fn=step)
    host_params, host_state = jax.tree.map(np.asarray, jax.device_get((result.state.params, result.state.model_state)))
    trained_mask = jax.tree.map(lambda a, b: bool(a or b), mask_c, mask_f)
    return train.Trained(params=host_params, model_state=host_state, fit=result,
                         trainable=optim.trainable_count(params, trained_mask),
                         optimizer_state_size=optim.state_size(result.state.opt_state))
