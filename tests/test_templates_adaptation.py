"""Template mixtures' domain adaptation: the paper's discriminator placement (a CNN on the blocks' output) and
M3SDA's two-classifier discrepancy with its three-step iteration."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from modular import params as P
from modular.methods.templates import adaptation as A, discrepancy as D
from modular.models import isometric


def test_trunk_discriminator_is_a_cnn_on_the_maps_before_the_output_adapter():
    cfg = isometric.default_config(width=4, expansion=2, depth=2, num_templates=2, stride=4, out_dim=8)
    # shapes only (jax.eval_shape compiles nothing)
    params, stats = jax.eval_shape(lambda k: isometric.init(cfg, k, 1, [3]), jax.random.key(0))
    images = jax.ShapeDtypeStruct((5, 16, 16, 1), jnp.float32)
    _, out, _ = jax.eval_shape(lambda p, s, x: isometric.apply(cfg, p, s, x), params, stats, images)
    assert out["trunk"].shape == (5, 4, 4, isometric.trunk_width(cfg)) and out["features"].shape == (5, 8)
    tree = A.add_discriminator({}, jax.random.key(2), isometric.trunk_width(cfg), hidden=6, placement="trunk")
    d = tree[A.ADVERSARY]
    assert sorted(d) == ["conv1", "conv2", "conv3"] and d["conv3"]["kernel"].shape == (3, 3, 6, 1)
    assert jax.eval_shape(A.discriminator_apply, d, out["trunk"]).shape == (5,)
    # the ADDA objective on maps: a descent step helps D separate the domains and moves targets towards source
    fs = jax.random.normal(jax.random.key(3), (16, 4, 4, 4)) + 1.0
    ft = jax.random.normal(jax.random.key(4), (16, 4, 4, 4)) - 1.0
    gd, gt = jax.jit(jax.grad(lambda d, ft: A.adversarial_terms(d, fs, ft, "adda")[0], argnums=(0, 1)))(d, ft)
    d_loss = jax.jit(lambda d: A.adversarial_terms(d, fs, ft, "adda")[1]["disc_loss"])
    assert float(d_loss(jax.tree.map(lambda p, g: p - 0.05 * g, d, gd))) < float(d_loss(d))
    source_logit = jax.jit(lambda f: jnp.mean(A.discriminator_apply(d, f)))
    assert float(source_logit(ft - 0.5 * gt)) > float(source_logit(ft))
    with pytest.raises(ValueError, match="Unknown discriminator placement"):
        A.add_discriminator({}, jax.random.key(2), 4, placement="logits")


# --- M3SDA's two-classifier discrepancy ---------------------------------------------------------------------

def test_classifier_discrepancy_is_the_mean_absolute_probability_difference():
    # row 1: softmax([0, 0]) = [.5, .5] vs softmax([ln 3, 0]) = [.75, .25]; row 2 equal: (.25 + .25 + 0 + 0) / 4
    a = jnp.array([[0.0, 0.0], [1.0, 2.0]])
    b = jnp.array([[jnp.log(3.0), 0.0], [1.0, 2.0]])
    assert float(D.classifier_discrepancy(a, b)) == pytest.approx(0.125, abs=1e-6)
    assert float(D.classifier_discrepancy(b, a)) == pytest.approx(0.125, abs=1e-6)
    assert float(D.classifier_discrepancy(a, a)) == 0.0


def _toy_m3sda(seed=0):
    """A linear stand-in for the network: frozen source features, target features through the tuned 'mixture'
    (the BN statistics count the target passes), F1 = the task's head, F2 its perturbed copy."""
    k = jax.random.split(jax.random.key(seed), 6)
    params = dict(frozen=dict(w=jax.random.normal(k[0], (4, 3))),
                  tasks=dict(t=dict(mixture=jnp.eye(4, 3) + 0.1 * jax.random.normal(k[1], (4, 3)),
                                    head=dict(kernel=jax.random.normal(k[2], (3, 2)), bias=jnp.zeros((2,))))))
    params = D.add_second_classifier(params, "t", k[3], noise=0.5)
    batch = dict(source=dict(image=jax.random.normal(k[4], (16, 4)), label=jnp.arange(16) % 2),
                 target=dict(image=2.0 + jax.random.normal(k[5], (16, 4))))
    source_fn = lambda p, b: b["source"]["image"] @ p["frozen"]["w"]
    target_fn = lambda p, s, b: (b["target"]["image"] @ p["tasks"]["t"]["mixture"], dict(passes=s["passes"] + 1))
    return params, dict(passes=jnp.zeros((), jnp.int32)), batch, source_fn, target_fn


def test_m3sda_steps_train_only_their_group_in_their_direction():
    params, stats, batch, source_fn, target_fn = _toy_m3sda()
    classifiers = P.mask(params, [D.head_rule("t")])
    features = P.mask(params, ["tasks/t/mixture"])
    objectives = D.step_objectives(target_fn, A.moment_distance, "t", 1.0, classifiers, features)
    src, labels = source_fn(params, batch), batch["source"]["label"]
    grads = {k: P.flatten(jax.jit(jax.grad(lambda p, f=f: f(p, stats, src, labels, batch)[0]))(params))
             for k, f in objectives.items()}
    moving = {k: sorted(p for p, g in g_k.items() if np.any(np.asarray(g) != 0)) for k, g_k in grads.items()}
    heads = ["second_classifier/bias", "second_classifier/kernel", "tasks/t/head/bias", "tasks/t/head/kernel"]
    assert moving == dict(A=heads + ["tasks/t/mixture"], B=heads, C=["tasks/t/mixture"])
    disc = jax.jit(lambda p: D.classifier_discrepancy(*(target_fn(p, stats, batch)[0] @ h["kernel"] + h["bias"]
                                                        for h in (p["tasks"]["t"]["head"], p[D.SECOND]))))
    descend = lambda k, lr=0.05: P.unflatten({p: v - lr * grads[k][p] for p, v in P.flatten(params).items()})
    # B pulls the classifiers apart on the target, C pulls them together, A moves the features towards the source
    assert float(disc(descend("B"))) > float(disc(params)) > float(disc(descend("C")))
    md = jax.jit(lambda p: A.moment_distance(src, target_fn(p, stats, batch)[0]))
    assert float(md(descend("A", 1e-4))) < float(md(params))


def test_m3sda_iteration_steps_each_optimizer_only_in_its_steps():
    """One iteration through train.fit: A and B step the classifiers' optimizer (2), A and each of the n C steps
    the features' (1 + n); the target passes thread the BN statistics (2 + n); frozen parameters stay put."""
    params, stats, batch, source_fn, target_fn = _toy_m3sda()
    settings = D.M3SDA(generator_steps=3, second_init_noise=0.5)
    host = jax.tree.map(np.asarray, batch)
    run = D.fit(params, stats, source_fn=source_fn, target_fn=target_fn, distance=A.moment_distance, task="t",
                tunable="tasks/t/mixture", tunable_mult=1.0, settings=settings, optim_cfg=common.optim_config(lr=0.01),
                batch_fn=lambda step: host, num_iterations=1, log_every=1, verbose=False)
    is_count = lambda x: np.ndim(x) == 0 and np.issubdtype(np.asarray(x).dtype, np.integer)  # Adam's, the schedule's
    counts = {group: {int(x) for x in jax.tree.leaves(state) if is_count(x)}
              for group, state in run.fit.state.opt_state.items()}
    assert counts == dict(classifiers={2}, features={4})
    assert int(run.model_state["passes"]) == 5 and settings.iterations(20) == 5
    changed = [k for k in P.flatten(params) if not np.array_equal(P.flatten(params)[k], P.flatten(run.params)[k])]
    assert sorted(changed) == ["second_classifier/bias", "second_classifier/kernel", "tasks/t/head/bias",
                               "tasks/t/head/kernel", "tasks/t/mixture"]
    assert {"source_ce", "discrepancy", "discrepancy_max", "moment_distance"} <= set(run.fit.history[-1])
    with pytest.raises(ValueError, match="none of the classifiers"):
        D.fit(params, stats, source_fn=source_fn, target_fn=target_fn, distance=A.moment_distance, task="t",
              tunable="tasks/t/.*", tunable_mult=1.0, settings=settings, optim_cfg=common.optim_config(lr=0.01),
              batch_fn=lambda step: host, num_iterations=1, verbose=False)
