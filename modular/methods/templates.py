"""Template-mixture training: regularizers, fixed signatures, multi-task and transfer loss/optimizer rules.

Shared subtree `shared/...` (templates, adapters) and task-private `task{t}/...` (mixture logits xi,
per-task BN, head) come from `modular.models.isometric`; freezing is done by regex rules on those paths
(`modular.optim`), so "transfer with frozen templates" is just a different rule list.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from modular import data as D, train
from modular.models import isometric

SIGNATURES = ("learned", "sequential", "cyclic", "random")


def signature(kind: str, depth: int, num_templates: int, seed: int = 0) -> list[int] | None:
    """Template index per layer for a fixed one-hot signature (None = learned mixture).

    sequential: consecutive layers share a template (blocks of L/K layers); cyclic: layer l uses l mod K;
    random: a seeded uniform draw. All use the same K templates, so parameter counts match the learned one.
    """
    if kind not in SIGNATURES:
        raise ValueError(f"Unknown signature {kind!r}; known: {', '.join(SIGNATURES)}.")
    if kind == "learned":
        return None
    if kind == "sequential":
        return [l * num_templates // depth for l in range(depth)]
    if kind == "cyclic":
        return [l % num_templates for l in range(depth)]
    return [int(i) for i in np.random.default_rng(seed).integers(0, num_templates, depth)]


def entropy(xi: jax.Array) -> jax.Array:
    """Mean per-layer entropy of mixture weights; minimizing it pushes xi towards one-hot."""
    return -jnp.mean(jnp.sum(xi * jnp.log(xi + 1e-8), axis=-1))


def clustering(xi: jax.Array, templates: Mapping[str, jax.Array]) -> jax.Array:
    """R = sum_k xi_k g(||theta_bar - theta_k||) averaged over layers, with g(d) = d^2.

    theta_bar is the layer's mixed parameter vector: the penalty is the xi-weighted spread of the
    templates around the generated layer, small when the mixture leans on one template (or the
    templates it mixes are close), so it clusters each layer around few templates.
    """
    bank = jnp.concatenate([v.reshape(v.shape[0], -1) for v in templates.values()], axis=1)  # [K, P]
    mixed = xi @ bank                                                                         # [L, P]
    dist2 = jnp.sum((mixed[:, None, :] - bank[None, :, :]) ** 2, axis=-1)                     # [L, K]
    return jnp.mean(jnp.sum(xi * dist2, axis=-1)) / bank.shape[1]


def multitask_loss(cfg, *, tasks: Sequence[int], signatures: Mapping[int, Sequence[int] | None],
                   entropy_weight: float = 0.0, clustering_weight: float = 0.0):
    """loss_fn for train.fit: sum over `tasks` of cross-entropies (batch keys image{t}/label{t}) + regularizers."""

    def loss_fn(params, batch_stats, batch, rng):
        del rng
        total, metrics, stats = 0.0, {}, batch_stats
        for t in tasks:
            logits, _, stats = isometric.apply(cfg, params, stats, batch[f"image{t}"], task=t, train=True,
                                               signature=signatures[t])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch[f"label{t}"]).mean()
            metrics[f"ce{t}"] = ce
            metrics[f"acc{t}"] = jnp.mean(jnp.argmax(logits, -1) == batch[f"label{t}"])
            total = total + ce
            if cfg.num_templates and signatures[t] is None:
                xi = isometric.mixture_weights(params, t)
                if entropy_weight:
                    total = total + entropy_weight * entropy(xi)
                if clustering_weight:
                    total = total + clustering_weight * clustering(xi, params["shared"]["templates"])
        return total, (stats, metrics)

    return loss_fn


def batch_fn(datasets: Mapping[int, D.Dataset], batch_size: int, seed: int):
    """step -> {image{t}, label{t}}: an independent step-pure batch from every task id t."""
    def fn(step):
        out = {}
        for t, ds in datasets.items():
            b = D.batch_at(ds.train_images, ds.train_labels, step, batch_size, seed + 1000 * t)
            out[f"image{t}"], out[f"label{t}"] = b["image"], b["label"]
        return out
    return fn


def evaluate(cfg, params, batch_stats, ds: D.Dataset, task: int, signature: Sequence[int] | None = None) -> float:
    """Test accuracy of `task` with its moving BN statistics."""
    apply_fn = lambda variables, batch: isometric.apply(cfg, variables["params"], variables["batch_stats"],
                                                        batch["image"], task=task, signature=signature)[0]
    return train.accuracy(apply_fn, dict(params=params, batch_stats=batch_stats), ds.test_images, ds.test_labels)


def summary(params, num_tasks: int, signatures: Sequence[Sequence[int] | None]) -> dict:
    """Per task: mixture weights [L,K], argmax per layer and one-hotness."""
    out = {}
    for t in range(num_tasks):
        xi = np.asarray(isometric.mixture_weights(params, t, signatures[t]))
        out[t] = dict(xi=xi, signature=[int(i) for i in xi.argmax(-1)], one_hotness=isometric.one_hotness(xi))
    return out


def param_counts(params, num_tasks: int) -> dict:
    """Parameters shared by all tasks vs private to each task (mixture, BN patch, head)."""
    count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
    per_task = {f"task{t}": count(params[f"task{t}"]) for t in range(num_tasks)}
    parts = {k: count(v) for k, v in params["task0"].items()}
    return dict(shared=count(params["shared"]), per_task=per_task, per_task_parts=parts,
                shared_parts={k: count(v) for k, v in params["shared"].items()})


# lr rules ([(regex, mult)], first match wins) for modular.optim.build
def multitask_rules(mixture_lr_mult: float, fixed_signature: bool) -> list[tuple[str, float]]:
    return [(r"task\d+/mixture", 0.0 if fixed_signature else mixture_lr_mult)]


def transfer_rules(target: int, kind: str, mixture_lr_mult: float) -> list[tuple[str, float]]:
    """Only the target task trains; templates and adapters frozen. 'bn_logits' also freezes xi."""
    tgt = f"task{target}"
    rules = [(rf"{tgt}/mixture", 0.0 if kind == "bn_logits" else mixture_lr_mult),
             (rf"{tgt}/(bn|head)/.*", 1.0)]
    return rules
