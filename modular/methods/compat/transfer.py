"""Faster transfer (paper Sec. 5), as the paper runs it: network a is the *pretrained* network with its
rotation-prediction head; a new network b is trained on the target task incrementally against a's frozen RP
head (RP only, with or without IIW); then extractor a and head b are recombined and the recombination starts
the fine-tuning on the target task. The baseline fine-tunes extractor a under a re-initialised head. Every
start gets the same learning-rate grid, chosen on the target's validation split at the last epoch; the test
set is read at 0 epochs (no training) and after every epoch of the chosen run.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import ml_collections
import numpy as np

from modular import data, optim, protocol, rng, train
from modular import params as P
from modular.methods.compat.losses import make_loss_fn
from modular.methods.compat.modules import CompatModules, init_variables
from modular.methods.compat.recombine import recombine_trees, task_accuracy
from modular.methods.compat.schedule import Pair

PAPER_CLAIM = ("Sec. 5.3, Fig. 4: source and target models trained against one frozen RP head (itself trained on "
               "a third task, CIFAR-100) recombine at 40.0-66.4% before fine-tuning, where a re-initialised head "
               "and recombined independently trained components are at chance, and stay significantly better "
               "after 1 epoch.")
MODES = ("batch_stats", "eval")


def with_fresh_head(mods: CompatModules, params: Mapping, stats: Mapping, task: str, image_shape: tuple,
                    key: jax.Array) -> tuple[dict, dict]:
    """The trees with `task`'s head re-initialised from `key` (drawn independently of the trained ones)."""
    fresh_p, fresh_s = init_variables(mods, key, image_shape, identical_init=False)
    keep_fresh = [f"tasks/{task}/head/.*"]
    return (P.load_matching(fresh_p, params, dont_load=keep_fresh, require_all=True),
            P.load_matching(fresh_s, stats, dont_load=keep_fresh, require_all=True))


def transfer_head(mods: CompatModules, params: Mapping, stats: Mapping, ds, *, extractor_of: str, head_of: str,
                  optim_cfg: ml_collections.ConfigDict, epochs: int, batch_size: int, train_part: str = "head",
                  seed: int = 0, workdir: str | None = None, verbose: bool = True, name: str = "transfer",
                  keep_states: bool = False) -> dict:
    """Fine-tune extractor `extractor_of` + the head of `head_of` on `ds` (head_of's task).

    Returns accuracies on ds's test arrays (a validation Dataset holds validation there) after 0, 1, ...,
    `epochs` epochs, in both BatchNorm modes; the 0-epoch numbers are computed on the untouched recombined
    weights, before any optimizer step. train_part: 'head' (the extractor stays frozen) or 'all'.
    `keep_states`: also return {epoch: (params, stats)} as 'states', to score the chosen run on test later.
    """
    if mods.extractor_b is not None:
        raise ValueError("Head transfer between networks needs one extractor architecture (compat model_b unset).")
    if train_part not in ("head", "all"):
        raise ValueError(f"compat.transfer_train must be 'head' or 'all', got {train_part!r}.")
    if epochs < 0:
        raise ValueError(f"compat.transfer_epochs must be >= 0, got {epochs}.")
    p0, s0 = recombine_trees(params, stats, extractor_of=extractor_of, into=head_of)

    def accs(p, s):
        return {m: task_accuracy(mods, p, s, head_of, head_of, ds.test_images, ds.test_labels, ds.num_classes,
                                 mode=m) for m in MODES}

    curve = [dict(epoch=0, step=0, **accs(p0, s0))]
    out = dict(curve=curve, steps_per_epoch=0, train_seconds=0.0)
    states = {0: (p0, s0)}
    if keep_states:
        out["states"] = states
    if epochs == 0:
        return out
    steps_per_epoch = len(ds.train_images) // min(int(batch_size), len(ds.train_images))  # remainders dropped

    def eval_fn(state):
        step = int(jax.device_get(state.step))
        p, s = jax.tree.map(np.asarray, jax.device_get((state.params, state.model_state)))
        curve.append(dict(epoch=step // steps_per_epoch, step=step, **accs(p, s)))
        if keep_states:
            states[step // steps_per_epoch] = (p, s)
        return {f"acc_{m}": curve[-1][m] for m in MODES}

    trained = train.train_subtrees(
        p0, s0, loss_fn=make_loss_fn(mods, (head_of,)), optim_cfg=optim_cfg,
        rules=[(f"tasks/{head_of}/head/.*" if train_part == "head" else f"tasks/{head_of}/.*", 1.0)],
        default_mult=0.0,
        batch_fn=lambda step: data.multitask_batch({head_of: ds}, step, batch_size, rng.seed(seed, "transfer")),
        num_steps=epochs * steps_per_epoch, seed=seed, name=name, workdir=workdir, log_every=steps_per_epoch,
        eval_fn=eval_fn, eval_every=steps_per_epoch, verbose=verbose)
    out.update(steps_per_epoch=steps_per_epoch, train_seconds=trained.fit.seconds)
    return out


def fast_transfer(pairs: Mapping[str, Pair], val_b, test_b, *, optim_cfg: ml_collections.ConfigDict,
                  lrs: Sequence[float], epochs: int, batch_size: int, train_part: str = "all", seed: int = 0,
                  verbose: bool = False) -> dict:
    """One seed of the paper's fast transfer. `pairs`: {name: incrementally trained pair} whose network a
    is the pretrained network (the same a for every name) and b the target network; `val_b` the target's
    validation Dataset (fit images in train_*, validation in test_*), `test_b` its test Dataset.

    Starts: each pair's recombination (extractor a + head b) and 'reinit' (extractor a of the first pair
    under a fresh head). Each start fine-tunes `train_part` for `epochs` epochs at every rate of `lrs`; the
    rate with the best last-epoch validation accuracy (stored BN statistics) is chosen. Returns
    {start: {lr, validation: {lr: accuracy}, test: [{epoch, batch_stats, eval}]}}."""
    if not lrs:
        raise ValueError("compat.transfer_lrs must name at least one learning rate.")
    names = list(pairs)
    first = pairs[names[0]]
    fresh = with_fresh_head(first.modules, first.params, first.stats, "b", test_b.image_shape,
                            rng.key(seed, "fresh_head"))
    starts = {n: (pairs[n].modules, pairs[n].params, pairs[n].stats) for n in names}
    starts["reinit"] = (first.modules, *fresh)
    out = {}
    for tag, (mods, p, s) in starts.items():
        runs = {}
        for lr in lrs:
            runs[float(lr)] = transfer_head(
                mods, p, s, val_b, extractor_of="a", head_of="b", optim_cfg=optim.override(optim_cfg, lr=float(lr)),
                epochs=epochs, batch_size=batch_size, train_part=train_part, seed=seed, verbose=verbose,
                name=f"fast_transfer/{tag}/lr{lr:g}", keep_states=True)
        val = {lr: r["curve"][-1]["eval"] for lr, r in runs.items()}
        chosen, _ = protocol.select([{"lr": lr} for lr in val], list(val.values()))
        states = runs[chosen["lr"]]["states"]
        test = [dict(epoch=e, **{m: task_accuracy(mods, ps, ss, "b", "b", test_b.test_images, test_b.test_labels,
                                                  test_b.num_classes, mode=m) for m in MODES})
                for e, (ps, ss) in sorted(states.items())]
        out[tag] = dict(lr=chosen["lr"], validation={f"{lr:g}": v for lr, v in val.items()}, test=test,
                        validation_curve=runs[chosen["lr"]]["curve"])
    return out
