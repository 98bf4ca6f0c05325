"""Unsupervised domain adaptation of a few chosen parameters (paper Table 3).

The target's features are pulled towards the frozen source model's by matching their first and
second moments, adversarially against a small domain discriminator (ADDA / gradient reversal), or by M3SDA
(moment matching plus the two-classifier discrepancy, `discrepancy.py`). Which parameters may move is
decided by the rules: only the target's mixture weights xi (the paper's method), or only the input adapter
of a plain net (the baseline); M3SDA's classifiers (the target's head and a second one) train too. The frozen source model and the
discriminator ride along in the trained tree, under `reference/...` and `adversary/...`, so the loss
functions depend on hashable arguments only and each compiles once.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from modular import data, params as P, protocol, rng, train
from modular.methods.templates import discrepancy as D
from modular.methods.templates.multitask import Outcome, Recipe, evaluate, param_counts, summary, train_tasks
from modular.methods.templates.transfer import choose_source
from modular.models import isometric

REFERENCE = "reference"   # {'params', 'batch_stats'} of the frozen source model
ADVERSARY = "adversary"   # the domain discriminator
METHODS = ("moment_matching", "adversarial", "m3sda")
ADVERSARIAL = ("adda", "grl")


def moment_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared distance of per-feature means plus of per-feature second moments."""
    return jnp.sum((a.mean(0) - b.mean(0)) ** 2) + jnp.sum(((a ** 2).mean(0) - (b ** 2).mean(0)) ** 2)


def with_reference(params: Mapping, batch_stats: Mapping) -> dict:
    """params carrying a frozen copy of the model (params and statistics) as the source side of the losses."""
    return dict(params, **{REFERENCE: dict(params=dict(params), batch_stats=batch_stats)})


def model_params(params: Mapping) -> dict:
    """The network's own subtrees, without the reference model, the discriminator and M3SDA's second classifier."""
    return {k: v for k, v in params.items() if k not in (REFERENCE, ADVERSARY, D.SECOND)}


def _features(cfg, params, batch_stats, batch, source_task: str, target_task: str, where: str = "features"):
    """(source `where` activations from the frozen reference in eval mode, the target's, new batch_stats):
    'features' are the pooled output-adapter features, 'trunk' the blocks' NHWC maps before the output adapter.
    The target runs in train mode, so its moving BN statistics follow the target domain."""
    ref = params[REFERENCE]
    _, src, _ = isometric.apply(cfg, ref["params"], ref["batch_stats"], batch["source"]["image"], task=source_task)
    _, tgt, batch_stats = isometric.apply(cfg, params, batch_stats, batch["target"]["image"], task=target_task,
                                          train=True)
    return jax.lax.stop_gradient(src[where]), tgt[where], batch_stats


def moment_matching_loss(cfg, source_task: str, target_task: str):
    """loss_fn for train.fit on batches {'source', 'target'} (images only): no target labels are used."""
    return _moment_matching_loss(ml_collections.FrozenConfigDict(cfg), source_task, target_task)


@functools.lru_cache(maxsize=16)
def _moment_matching_loss(cfg, source_task: str, target_task: str):
    def loss_fn(params, batch_stats, batch, key):
        del key
        src, tgt, batch_stats = _features(cfg, params, batch_stats, batch, source_task, target_task)
        loss = moment_distance(src, tgt)
        return loss, (batch_stats, dict(moment_distance=loss))
    return loss_fn


@functools.lru_cache(maxsize=16)
def _feature_fns(cfg, source_task: str, target_task: str):
    """(source_fn, target_fn) of `discrepancy.fit`: the frozen reference's pooled source features (eval mode),
    and the target's pooled features with its new moving BN statistics (train mode)."""
    def source_fn(params, batch):
        ref = params[REFERENCE]
        return isometric.apply(cfg, ref["params"], ref["batch_stats"], batch["source"]["image"], task=source_task)[1][
            "features"]

    def target_fn(params, batch_stats, batch):
        _, out, batch_stats = isometric.apply(cfg, params, batch_stats, batch["target"]["image"], task=target_task,
                                              train=True)
        return out["features"], batch_stats
    return source_fn, target_fn


# --- adversarial (ADDA-style) adaptation ------------------------------------------------------------------
#
# A small domain discriminator D on pooled features says "source" (1) or "target" (0). It lives in the
# trained tree under `adversary/...`, so one training loop updates both D and the target's xi; the rules
# decide that nothing else moves. Two formulations:
#   adda: ADDA's GAN loss with inverted labels. D minimises BCE(D(f_src), 1) + BCE(D(f_tgt), 0) on
#         stop-gradient features; xi minimises BCE(D'(f_tgt), 1) through a stop-gradient copy D' of D.
#         Both terms are summed into one objective, so D and xi update simultaneously each step.
#   grl:  DANN's gradient reversal. One BCE domain loss; D descends it and xi, behind a gradient-reversal
#         layer, ascends it (the minimax form; weaker gradients once D is confident).

PLACEMENTS = ("trunk", "features")   # where the discriminator looks: the paper's CNN on the trunk, or an MLP


def conv_discriminator_init(key: jax.Array, channels: int, hidden: int = 32) -> dict:
    """A 3-layer CNN discriminator (3x3 convs, ReLU, the last to one channel, averaged over space) on NHWC maps."""
    k1, k2, k3 = jax.random.split(key, 3)
    he = lambda k, shape: jnp.sqrt(2.0 / (9 * shape[2])) * jax.random.normal(k, shape)
    return dict(conv1=dict(kernel=he(k1, (3, 3, channels, hidden)), bias=jnp.zeros((hidden,))),
                conv2=dict(kernel=he(k2, (3, 3, hidden, hidden)), bias=jnp.zeros((hidden,))),
                conv3=dict(kernel=0.01 * jax.random.normal(k3, (3, 3, hidden, 1)), bias=jnp.zeros((1,))))


def _conv(x, layer):
    return jax.lax.conv_general_dilated(x, layer["kernel"], (1, 1), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + layer["bias"]


def discriminator_init(key: jax.Array, in_dim: int, hidden: int = 64) -> dict:
    """A 2-layer MLP discriminator on pooled [B, D] features."""
    k1, k2 = jax.random.split(key)
    he = lambda k, shape: jnp.sqrt(2.0 / shape[0]) * jax.random.normal(k, shape)
    return dict(dense1=dict(kernel=he(k1, (in_dim, hidden)), bias=jnp.zeros((hidden,))),
                dense2=dict(kernel=0.01 * jax.random.normal(k2, (hidden, 1)), bias=jnp.zeros((1,))))


def discriminator_apply(d_params, features: jax.Array) -> jax.Array:
    """[B, D] features (MLP) or [B, H, W, C] maps (CNN) -> [B] logits of 'comes from the source domain'."""
    if "conv1" in d_params:
        h = jax.nn.relu(_conv(features, d_params["conv1"]))
        h = jax.nn.relu(_conv(h, d_params["conv2"]))
        return jnp.mean(_conv(h, d_params["conv3"]), axis=(1, 2, 3))
    h = jax.nn.relu(features @ d_params["dense1"]["kernel"] + d_params["dense1"]["bias"])
    return (h @ d_params["dense2"]["kernel"] + d_params["dense2"]["bias"])[:, 0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def gradient_reversal(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """Identity forward; multiplies the incoming gradient by -scale backward."""
    return x


def _grl_fwd(x, scale):
    return x, None


def _grl_bwd(scale, _, g):
    return (-scale * g,)


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


def domain_bce(logits: jax.Array, label: float) -> jax.Array:
    """Mean binary cross-entropy of logits against a constant label (1 = source, 0 = target)."""
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, label)))


def _check_formulation(formulation: str) -> None:
    if formulation not in ADVERSARIAL:
        raise ValueError(f"Unknown adversarial formulation {formulation!r}; known: {', '.join(ADVERSARIAL)}.")


def adversarial_terms(d_params, f_src: jax.Array, f_tgt: jax.Array, formulation: str = "adda",
                      weight: float = 1.0) -> tuple[jax.Array, dict]:
    """(objective, metrics): minimising the objective trains D to tell the domains apart and f_tgt to fool it."""
    _check_formulation(formulation)
    f_src = jax.lax.stop_gradient(f_src)  # the source model is a constant
    if formulation == "adda":
        d_src, d_tgt = discriminator_apply(d_params, f_src), discriminator_apply(d_params, jax.lax.stop_gradient(f_tgt))
        d_loss = domain_bce(d_src, 1.0) + domain_bce(d_tgt, 0.0)
        g_loss = domain_bce(discriminator_apply(jax.lax.stop_gradient(d_params), f_tgt), 1.0)
        total = d_loss + weight * g_loss
    else:
        d_src, d_tgt = discriminator_apply(d_params, f_src), discriminator_apply(d_params, gradient_reversal(f_tgt, weight))
        d_loss = domain_bce(d_src, 1.0) + domain_bce(d_tgt, 0.0)
        g_loss, total = -d_loss, d_loss
    acc = 0.5 * (jnp.mean(d_src > 0) + jnp.mean(d_tgt <= 0))
    return total, dict(disc_loss=d_loss, confusion_loss=g_loss, domain_accuracy=acc)


def add_discriminator(params, key: jax.Array, feature_dim: int, hidden: int = 64, placement: str = "features") -> dict:
    """params with a fresh discriminator under `adversary/...` (ignored by isometric.apply): a CNN over
    `feature_dim` channels for placement 'trunk', an MLP over `feature_dim` features for 'features'."""
    _check_placement(placement)
    init = conv_discriminator_init if placement == "trunk" else discriminator_init
    return dict(params, **{ADVERSARY: init(key, feature_dim, hidden)})


def _check_placement(placement: str) -> None:
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown discriminator placement {placement!r}; known: {', '.join(PLACEMENTS)}.")


def adversarial_loss(cfg, source_task: str, target_task: str, formulation: str = "adda", weight: float = 1.0,
                     placement: str = "features"):
    """loss_fn for train.fit on batches {'source', 'target'}; params must hold `reference/...` and `adversary/...`
    (a discriminator made for the same `placement`)."""
    _check_formulation(formulation)
    _check_placement(placement)
    return _adversarial_loss(ml_collections.FrozenConfigDict(cfg), source_task, target_task, formulation, float(weight),
                             placement)


@functools.lru_cache(maxsize=16)
def _adversarial_loss(cfg, source_task: str, target_task: str, formulation: str, weight: float, placement: str):
    def loss_fn(params, batch_stats, batch, key):
        del key
        src, tgt, batch_stats = _features(cfg, params, batch_stats, batch, source_task, target_task, placement)
        total, metrics = adversarial_terms(params[ADVERSARY], src, tgt, formulation, weight)
        return total, (batch_stats, metrics)
    return loss_fn


def discriminator_rule(lr_mult: float = 1.0) -> tuple[str, float]:
    """The rule that trains the discriminator (next to the tunable parameters' rule, default 0 = frozen)."""
    return rf"{ADVERSARY}/.*", lr_mult


# --- the paper's comparison ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Adversarial:
    """Settings of the adversarial method; placement 'trunk' is the paper's (a 3-layer CNN on the blocks'
    output, before the output adapter), 'features' an MLP on the pooled features after it."""
    formulation: str = "adda"
    weight: float = 1.0
    hidden: int = 64
    discriminator_lr_mult: float = 1.0
    placement: str = "trunk"


def adapt_unsupervised(model_cfg, recipe: Recipe, params, stats, source: data.Dataset, target: data.Dataset, *,
                       method: str, tunable: str | None, source_task: str, target_task: str, num_steps: int,
                       adversarial: Adversarial, stage: str | None, m3sda: D.M3SDA | None = None) -> train.Trained:
    """Tune only the `tunable` regex (everything else frozen) so `target_task` on target images looks like
    the frozen `source_task` on source images; returns the network's own trees (reference, D, F2 dropped).

    tunable None trains nothing: only the target task's moving BN statistics follow the target domain.
    m3sda also trains the target task's head and a second classifier, on the source's labels (its step A);
    `num_steps` is then the number of updates of the tuned parameters, as for the other methods."""
    if method not in METHODS:
        raise ValueError(f"Unknown adaptation method {method!r}; known: {', '.join(METHODS)}.")
    mult = recipe.mixture_lr_mult if tunable and "mixture" in tunable else 1.0
    if method == "m3sda":
        if not tunable:
            raise ValueError("M3SDA needs tuned feature parameters (tunable), not None.")
        settings = m3sda or D.M3SDA()
        start = D.add_second_classifier(with_reference(params, stats), target_task,
                                        rng.key(recipe.seed, "second_classifier"), settings.second_init_noise)
        source_fn, target_fn = _feature_fns(ml_collections.FrozenConfigDict(model_cfg), source_task, target_task)
        batches = {"source": (source.train_images, source.train_labels), "target": (target.train_images, None)}
        name, workdir = recipe.stage(stage)
        trained = D.fit(start, stats, source_fn=source_fn, target_fn=target_fn, distance=moment_distance,
                        task=target_task, tunable=tunable, tunable_mult=mult, settings=settings,
                        optim_cfg=recipe.optim_cfg, num_iterations=settings.iterations(num_steps),
                        batch_fn=lambda step: data.multitask_batch(batches, step, recipe.batch_size, recipe.seed),
                        seed=recipe.seed, name=name, workdir=workdir, checkpoint_every=recipe.checkpoint_every,
                        log_every=recipe.log_every, verbose=recipe.verbose)
        return dataclasses.replace(trained, params=model_params(trained.params))
    images = {"source": (source.train_images, None), "target": (target.train_images, None)}
    batch_fn = lambda step: data.multitask_batch(images, step, recipe.batch_size, recipe.seed)
    if not tunable:   # nothing trains: only the target task's moving BN statistics follow the target domain
        return train.Trained(params, reestimate_bn_stats(model_cfg, params, stats, target_task, num_steps, batch_fn),
                             None, 0, 0)
    start, rules = with_reference(params, stats), [(tunable, mult)]
    if method == "moment_matching":
        loss_fn = moment_matching_loss(model_cfg, source_task, target_task)
    else:
        a = adversarial
        dim = isometric.trunk_width(model_cfg) if a.placement == "trunk" else int(model_cfg.out_dim)
        start = add_discriminator(start, rng.key(recipe.seed, "discriminator"), dim, int(a.hidden), a.placement)
        rules.append(discriminator_rule(a.discriminator_lr_mult))
        loss_fn = adversarial_loss(model_cfg, source_task, target_task, a.formulation, a.weight, a.placement)
    # the target task's moving BN statistics follow the target domain although its BN patch is frozen
    trained = train_tasks(model_cfg, recipe, {target_task: target}, stage=stage, start=(start, stats), rules=rules,
                          default_mult=0.0, num_steps=num_steps, loss_fn=loss_fn, batch_fn=batch_fn,
                          update_frozen_stats=True)
    return dataclasses.replace(trained, params=model_params(trained.params))


def reestimate_bn_stats(model_cfg, params, stats, target_task: str, num_steps: int, batch_fn) -> dict:
    """`stats` after `num_steps` forward passes of `target_task` in train mode on `batch_fn(step)['target']`
    images: its moving BN statistics follow the target domain, no parameter changes (the BN-statistics-only
    control; the trainer refuses a run that trains nothing)."""
    forward = _stats_step(ml_collections.FrozenConfigDict(model_cfg), target_task)
    for step in range(int(num_steps)):
        stats = forward(params, stats, jnp.asarray(batch_fn(step)["target"]["image"]))
    return jax.device_get(stats)


@functools.lru_cache(maxsize=16)
def _stats_step(cfg, target_task: str):
    return jax.jit(lambda params, stats, images: isometric.apply(cfg, params, stats, images, task=target_task,
                                                                 train=True)[2])


def _last_metrics(fit: train.FitResult | None) -> dict:
    last = fit.history[-1] if fit is not None and fit.history else {}
    return {k: float(last[k]) for k in ("moment_distance", "disc_loss", "domain_accuracy", "source_ce",
                                        "discrepancy_max", "discrepancy") if k in last}


def _tuned(method: str, what: str, count: int, head) -> dict:
    """The table's 'tuned' and 'params' cells: M3SDA also keeps its tuned head (F1; F2 is dropped)."""
    if method == "m3sda":
        return dict(tuned=f"{what} + head", params=count + P.count(head))
    return dict(tuned=what, params=count)


def plain_adapter_config(model_cfg) -> ml_collections.ConfigDict:
    """The adaptation baseline's architecture (paper App. D.3): a plain isometric net whose number of layers is
    the template model's number of templates K, so that it holds about as many parameters; BN shared."""
    return ml_collections.ConfigDict(dict(model_cfg.items(), num_templates=0, bn="shared",
                                          depth=int(model_cfg.num_templates)))


def _method_key(prefix: str, method: str, adversarial: Adversarial) -> str:
    return f"{prefix}_{method}" if method != "adversarial" else f"{prefix}_{method}_{adversarial.formulation}"


def compare_adaptation(model_cfg, recipe: Recipe, sources, target: data.Dataset, *,
                       methods: Sequence[str], num_steps: int, adversarial: Adversarial,
                       bn_stats_baseline: bool, val_fraction: float = 0.2, score_examples: int = 1000,
                       m3sda: D.M3SDA | None = None) -> Outcome:
    """Sources (one Dataset or several) supervised and jointly; the target without labels (labels only for
    the supervised upper bound and a validation split carved from its training data).

    The target task starts as a copy of the source task whose model does best on the target's validation
    split (the paper pretrains on several sources and copies the best); the unsupervised losses pull the
    target towards that frozen source on the source's images. Every method is reported as target test
    accuracy before (that source model as is) and after tuning. 'target BN statistics only' runs the same
    loop with nothing trainable: it isolates how much of a gain comes from the target's moving BN
    statistics (which every unsupervised run also re-estimates). The baseline is a plain isometric net with K
    layers (K = the template model's number of templates, so about its parameter count, as in the paper's
    App. D.3), pretrained on the same sources, whose input adapter alone adapts.
    extra: source (the chosen one), sources, validation_scores, target, adapt_log, source_accuracy_on_source,
    before_after rows (accuracy in %).
    """
    if not model_cfg.num_templates:
        raise ValueError("Adapting mixture weights needs templates (model.num_templates > 0).")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"Unknown adaptation method {unknown[0]!r}; known: {', '.join(METHODS)}.")
    sources = [sources] if isinstance(sources, data.Dataset) else list(sources)
    named = {isometric.task_name(i): ds for i, ds in enumerate(sources)}
    fit, validation = protocol.validation_split(target, val_fraction, recipe.seed)
    accuracy, adapt_log, rows = {}, {}, []
    # 1. mixture model on the sources; the target task starts as a copy of the best one on validation
    src = train_tasks(model_cfg, recipe, named, stage="adapt_source",
                      num_classes=[ds.num_classes for ds in sources] + [target.num_classes])
    best, scored = choose_source(model_cfg, src.params, src.model_state, validation, list(named), score_examples,
                                 recipe.seed)
    source, tgt_task = named[best], isometric.task_name(len(sources))
    params = P.replace_subtree(src.params, f"tasks/{tgt_task}", src.params["tasks"][best])
    stats = P.replace_subtree(src.model_state, f"tasks/{tgt_task}", src.model_state["tasks"][best])
    before = accuracy["source_only"] = evaluate(model_cfg, params, stats, target, best)
    on_source = evaluate(model_cfg, params, stats, source, best)
    summaries = {f"source ({source.name})": summary(params, {best: None})[best]}
    xi, n_xi = f"tasks/{tgt_task}/mixture", int(np.size(params["tasks"][tgt_task]["mixture"]))
    common = dict(source_task=best, target_task=tgt_task, num_steps=num_steps, adversarial=adversarial, m3sda=m3sda)
    if bn_stats_baseline:
        run = adapt_unsupervised(model_cfg, recipe, params, stats, source, fit, method="moment_matching",
                                 tunable=None, stage="adapt_bn_stats_only", **common)
        after = accuracy["target_bn_stats_only"] = evaluate(model_cfg, params, run.model_state, target, tgt_task)
        rows.append(dict(method="target BN statistics only", tuned="-", params=0, before=before, after=after))
    for method in methods:
        run = adapt_unsupervised(model_cfg, recipe, params, stats, source, fit, method=method, tunable=xi,
                                 stage=f"adapt_mixture_{method}", **common)
        key = _method_key("mixture", method, adversarial)
        after = accuracy[key] = evaluate(model_cfg, run.params, run.model_state, target, tgt_task)
        adapt_log[key] = _last_metrics(run.fit)
        rows.append(dict(method=key, **_tuned(method, "target xi", n_xi, params["tasks"][tgt_task]["head"]),
                         before=before, after=after))
        summaries[f"target ({method})"] = summary(run.params, {tgt_task: None})[tgt_task]
    run = train_tasks(model_cfg, recipe, {tgt_task: fit}, stage="adapt_mixture_supervised", start=(params, stats),
                      rules=[(xi, recipe.mixture_lr_mult)], default_mult=0.0, num_steps=num_steps,
                      update_frozen_stats=True)
    after = accuracy["mixture_supervised_upper_bound"] = evaluate(model_cfg, run.params, run.model_state, target,
                                                                  tgt_task)
    rows.append(dict(method="mixture_supervised_upper_bound (labels)", tuned="target xi", params=n_xi,
                     before=before, after=after))
    summaries["target (supervised)"] = summary(run.params, {tgt_task: None})[tgt_task]
    # 2. baseline: a plain isometric net with as many layers as the template model has templates (about its
    #    parameter count, paper App. D.3), only its input adapter adapts
    plain = plain_adapter_config(model_cfg)
    base = train_tasks(plain, recipe, named, stage="adapt_plain_source", rules=[])
    plain_best, _ = choose_source(plain, base.params, base.model_state, validation, list(named), score_examples,
                                  recipe.seed)
    before = accuracy["plain_source_only"] = evaluate(plain, base.params, base.model_state, target, plain_best)
    n_in = P.count(base.params["shared"]["adapter_in"])
    for method in methods:
        run = adapt_unsupervised(plain, recipe, base.params, base.model_state, named[plain_best], fit, method=method,
                                 tunable=r"shared/adapter_in/.*", stage=f"adapt_plain_input_adapter_{method}",
                                 **dict(common, source_task=plain_best, target_task=plain_best))
        key = _method_key("plain_input_adapter", method, adversarial)
        after = accuracy[key] = evaluate(plain, run.params, run.model_state, target, plain_best)
        adapt_log[key] = _last_metrics(run.fit)
        tuned = _tuned(method, "plain input adapter", n_in, base.params["tasks"][plain_best]["head"])
        rows.append(dict(method=key, **tuned, before=before, after=after))
    for r in rows:
        r["before"], r["after"] = 100 * r["before"], 100 * r["after"]
        r["delta"] = r["after"] - r["before"]
    return Outcome(accuracy, summaries, param_counts(params),
                   dict(source=source.name, sources=[ds.name for ds in sources], plain_source=named[plain_best].name,
                        validation_scores={named[t].name: float(v) for t, v in zip(named, scored["scores"])},
                        target=target.name, adapt_log=adapt_log,
                        source_accuracy_on_source=on_source, before_after=rows))
