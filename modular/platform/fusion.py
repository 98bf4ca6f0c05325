"""A boundary XLA:CPU's fusion pass cannot cross, placed on residual streams and on BN activations.

XLA:CPU duplicates cheap elementwise producers into every consumer fusion. On a residual stream each
block output is an elementwise function of the previous one (BN, add, ReLU), so every consumer that is
itself a loop fusion recomputes the stream back to the last convolution. The worst consumers are the
transposes XLA inserts in front of weight-gradient convolutions: in ResNet-20 one of them read four
feature maps with a cache-hostile stride and took 129 ms of an 800 ms step. `fusion_boundary`
is the identity, computed on CPU through a `lax.cond` on a runtime predicate, which fusion treats as
opaque: the block output is computed once and consumers read it from memory. BN activations that feed
convolutions get one for the same reason (their transposes recomputed the BN). The gradient flowing back
through the boundary is materialised the same way (backward fusions duplicate just as much). Other
backends, whose fusion heuristics differ, get the plain identity in both directions.

Off by default: the models call `fusion_boundary` everywhere, and it is the plain identity until
`modular.platform.tune_cpu()` (or `enable()`) turns boundaries on, so the library's default programs are
XLA's own. `experiments.run` turns them on.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from modular import settings


def enable(on: bool = True) -> None:
    """Turn boundaries on (or off) for every model traced from now on (jit afresh to see the change)."""
    settings.configure(fusion_boundaries=bool(on))


def is_enabled() -> bool:
    return settings.current().fusion_boundaries


def scoped(on: bool):
    """Trace models with boundaries `on` inside the block only (A/B benchmarks and tests; jit afresh inside)."""
    return settings.scoped(fusion_boundaries=bool(on))


def disabled():
    return scoped(False)


def _same(v: jax.Array) -> jax.Array:
    return v


def _times_one(v: jax.Array) -> jax.Array:
    return v * 1.0


def _opaque_identity(x: jax.Array) -> jax.Array:
    # A scalar the compiler cannot know: the max over the leading (batch) axis of one entry per row,
    # which stays valid when that axis is sharded across devices (one small all-reduce).
    first = jnp.max(x[(slice(None),) + (0,) * (x.ndim - 1)]) if x.ndim else x
    # Both branches return x (the second when that scalar is NaN). They must differ in form,
    # or the cond is folded away; the predicate only has to be unknown to the compiler. The branches are
    # module-level functions so that JAX's trace cache knows them from one boundary to the next.
    return jax.lax.cond(first == first, _same, _times_one, x)


def _identity_on_cpu_only(x: jax.Array) -> jax.Array:
    # A concrete array is being computed eagerly (a model's init outside jit): no fusion to prevent, and a
    # cond run eagerly would compile a small program per call.
    if x.size == 0 or not is_enabled() or not isinstance(x, jax.core.Tracer):
        return x
    return jax.lax.platform_dependent(x, cpu=_opaque_identity, default=_same)


@jax.custom_vjp
def fusion_boundary(x: jax.Array) -> jax.Array:
    """x (and, backwards, its gradient), materialised once on CPU instead of recomputed in each consumer fusion."""
    return _identity_on_cpu_only(x)


def _forward(x):
    return _identity_on_cpu_only(x), None


def _backward(_, g):
    return (_identity_on_cpu_only(g),)


fusion_boundary.defvjp(_forward, _backward)
