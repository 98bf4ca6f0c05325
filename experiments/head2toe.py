"""Head2Toe (Evci et al. 2022) on an offline VTAB-1k-like suite: frozen backbone, features from every layer.

The backbone is pretrained once on the source (it plays the published pretrained model). For every seed
and target, `head2toe.compare_on_task` gives every method the same lr x steps grid (plus its own
regulariser grid), chooses on a validation split of the target's training data and reads the test set
once; the target's subsample, the validation split and every head's initialisation follow the seed.
"""
from __future__ import annotations

import jax
import ml_collections

from modular import data, protocol, reporting, supervised
from modular.methods import head2toe
from modular.projection.phases import Phase, phase, pretrain_phases

# Table 1 of the paper: ResNet-50 on VTAB-1k, mean over its 19 tasks (median of 3 seeds per task). The paper
# has no number for our digit-based targets, so its mean stands beside ours; layer-wise selection is in its
# Fig. 6 (a curve, no table number): "-".
PAPER_TABLE1 = dict(linear=57.0, all_l1=64.6, all_l2=63.3, all_l21=64.3, layerwise=None, layerwise_group=None,
                    head2toe=65.8, finetune=63.6, scratch=42.1, head2toe_ft=59.5)


def _targets(config) -> list:
    if config.data.get("target"):
        return [config.data.target]
    targets = list(config.data.targets)
    if not targets:
        raise ValueError("Set config.data.target or a non-empty config.data.targets for Head2Toe.")
    return targets


def _load_target(name: str, config, seed: int) -> data.Dataset:
    """A target of the suite, subsampled with `seed`; structured tasks relabel the source's images. Its test
    split is the pretraining's (`split_seed=config.seed`) in every seed: no test image was a pretraining one."""
    return data.vtab_like.load_task(
        name, image_size=config.data.image_size, channels=config.data.channels, seed=seed, split_seed=config.seed,
        max_train=config.data.max_train_target, max_test=config.data.max_test_target,
        source=config.data.name if not config.data.name.startswith("tfds:") else "mnist5k")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    targets, seeds = _targets(config), protocol.seeds(config)
    clf, src = supervised.pretrained_backbone(config, workdir, verbose=False)
    source_acc = clf.accuracy(src.test_images, src.test_labels)
    main = jax.process_index() == 0
    stages = reporting.Stages([f"seed {s}, target {t}" for s in seeds for t in targets], tag="head2toe")
    per_seed = []
    for seed in seeds:
        tasks = []
        for name in targets:
            if main:
                stages.next(f"{seed}/{name}")
            t = head2toe.compare_on_task(_load_target(name, config, seed), clf, config.head2toe, model_cfg=config.model,
                                         seed=seed, val_fraction=config.data.val_fraction)
            tasks.append(t)
            if main:
                print(f"[head2toe] seed {seed} {name}: " + " ".join(f"{m} {100 * v:.1f}" for m, v in t["accuracy"].items())
                      + f" | kept {t['selected_features']}/{t['total_features']}", flush=True)
        per_seed.append(tasks)
    summary = head2toe.summarize(per_seed)
    claims = head2toe.claims(summary)
    axes = head2toe.grid_axes(config.head2toe)
    edges = {m: protocol.grid_edges(axes[m], [t["methods"][m]["chosen"] for tasks in per_seed for t in tasks],
                                    seeds=[f"{t['seed']}/{t['task']}" for tasks in per_seed for t in tasks],
                                    scores=[list(zip(t["methods"][m]["grid_points"], t["methods"][m]["grid_validation"]))
                                            for tasks in per_seed for t in tasks],
                                    bounds=head2toe.GRID_BOUNDS)
             for m in summary["methods"]}
    table = head2toe.accuracy_table(summary, PAPER_TABLE1, grid_sizes={m: len(g) for m, g in head2toe.settings_grids(
        config.head2toe).items()})
    note = protocol.edges_note(edges)
    table_with_note = table + (f"\n\n{note}" if note else "")
    corr = summary["correlations"]
    results = dict(
        accuracy=protocol.means({m: e["mean"] for m, e in summary["estimates"].items()}),
        estimates=protocol.to_dicts(summary["estimates"], scale=100.0), seeds=seeds, targets=targets,
        grids=head2toe.settings_grids(config.head2toe), grid_axes=axes, grid_edges=edges, grid_edges_note=note,
        chosen={str(seed): {t["task"]: {m: r["chosen"] for m, r in t["methods"].items()} for t in tasks}
                for seed, tasks in zip(seeds, per_seed)},
        per_task=per_seed, source_accuracy=source_acc, source=src.name,
        affinity_gain_correlation=dict(per_seed=corr, note=head2toe.CORRELATION_NOTE.format(n=len(targets)),
                                       n_targets=len(targets)),
        cost_ratios=summary["cost_ratios"], claims=claims, stage_seconds=stages.done(),
        readme_tables={"head2toe": table_with_note, "head2toe_claims": protocol.claims_table(claims)},
        plots=head2toe.plots(per_seed[0], workdir))
    if main:
        print(f"source {src.name} test accuracy {100 * source_acc:.2f}%")
        print("Mean test accuracy (%) ± SE over seeds")
        print(table_with_note)
        for tasks in per_seed:
            print(head2toe.per_task_table(tasks, summary["methods"]))
        print("corr(gain over Linear, domain affinity) per seed: " + str(corr))
        print(head2toe.CORRELATION_NOTE.format(n=len(targets)))
    return results


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = "feature extraction and the linear heads' grid on cached features; evaluation"


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def phases(config) -> list[Phase]:
    h, d = config.head2toe, config.data
    targets = [d.target] if d.get("target") else list(d.targets)
    batch = h.get("finetune_batch_size") or h.get("batch_size") or config.batch_size
    steps = h.get("finetune_steps") or max(_as_list(h.get("steps", config.num_steps)))
    networks = int(bool(h.get("finetune", True))) + int(bool(h.get("head2toe_ft", True)))
    out = pretrain_phases(config)
    out += [phase(config, f"fine-tune on {t}", data=t, batch_size=batch, steps=steps, repeats=networks)
            for t in targets if networks]
    return out
