"""A `:full` config as the training phases it runs: which model, at which batch, for how many steps.

Each experiment's training time is dominated by a few kinds of train step: pretraining the backbone,
adapting it with some subtrees frozen (patches, fine-tuning) and training pairs or multi-task models. A
phase names one kind, the number of steps and how many times the experiment repeats it (transfer modes,
targets, sweep settings). The projection compiles one step per distinct phase and multiplies.

Left out, and said so in each experiment's `uncounted`: evaluation and feature-extraction forward passes,
Head2Toe's linear heads on cached features, the auxiliary heads of compatible components (DCC, rotation),
template-mixture specific layers beyond the isometric trunk (the trunk is counted at the summed batch).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import ml_collections

from modular.methods.patches import modes as patch_modes

_KNOWN_CLASSES = {"mnist5k": 10, "digits": 10, "cifar10": 10, "cifar100": 100, "stl10": 10, "svhn_cropped": 10,
                  "mnist": 10, "dtd": 47, "oxford_flowers102": 102, "eurosat": 10, "dmlab": 6,
                  "imagenet2012": 1000, "smallnorb#label_azimuth": 18, "smallnorb#label_elevation": 9}

# Training examples (the split named 'train'), for phases that run epochs.
_KNOWN_TRAIN_SIZES = {"cifar10": 50_000, "cifar100": 50_000, "stl10": 5_000, "svhn_cropped": 73_257,
                      "mnist": 60_000}

FULL_IMAGE = (32, 32, 3)  # configs without their own image size (adapt: the backbone's) get the :full pretrain's


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    model: ml_collections.ConfigDict
    num_classes: int
    image_size: int
    channels: int
    batch_size: int
    steps: int
    repeats: int = 1                 # how many times the experiment trains this phase
    rules: tuple | None = None       # [(regex, lr multiplier)], the rest frozen; None: everything trains

    @property
    def image_shape(self) -> tuple:
        return (self.image_size, self.image_size, self.channels)


def num_classes(name: str) -> int:
    """Classes of a dataset name, without reading the data (tensorflow-datasets' metadata for tfds names)."""
    if name.startswith("tfds:"):
        from modular.data import tfds_source
        base, label = tfds_source.parse(name)[0], tfds_source.label_feature(name)
        key = base if label == "label" else f"{base}#{label}"
        if key in _KNOWN_CLASSES:
            return _KNOWN_CLASSES[key]
        import tensorflow_datasets as tfds
        return int(tfds.builder(base).info.features[label].num_classes)
    base = name.split("/")[0]
    if base in _KNOWN_CLASSES:
        return _KNOWN_CLASSES[base]
    raise ValueError(f"The projection knows no class count for dataset {name!r}.")


def _phase(config, name, *, model=None, data=None, batch_size=None, steps=None, **kw) -> Phase:
    d = config.data
    return Phase(name=name, model=model or config.model, num_classes=kw.pop("num_classes", None) or num_classes(data or d.name),
                 image_size=int(kw.pop("image_size", None) or d.get("image_size") or FULL_IMAGE[0]),
                 channels=int(d.get("channels") or FULL_IMAGE[2]),
                 batch_size=int(batch_size or config.batch_size), steps=int(steps or config.num_steps), **kw)


def _pretrain(config) -> list[Phase]:
    if config.model.get("init"):  # published weights: only a classifier is fitted, the rest frozen
        return [_phase(config, "classifier on the loaded weights", rules=(("head/classifier/.*", 1.0),))]
    return [_phase(config, "pretrain")]


def _rules(mode: str) -> tuple:
    return tuple(patch_modes.lr_rules(mode))


def _patches(config) -> list[Phase]:
    t, m, r, target = config.transfer, config.multitask, config.multires, config.data.target
    out = _pretrain(config)
    lrs = len(t.get("lrs") or [None])  # every mode sweeps the learning-rate grid on validation
    out += [_phase(config, f"transfer {mode}", data=target, batch_size=t.batch_size, steps=t.num_steps,
                   rules=_rules(mode), repeats=lrs) for mode in t.modes]
    if m.enabled:  # one S/B patch per task over the summed batch; independent: a full model per task
        tasks = list(m.tasks)
        runs = len(m.get("lrs") or [None]) + 1   # each row's rate grid on validation, then a retrain at its choice
        out.append(_phase(config, "multitask S/B patches", data=tasks[0], batch_size=m.batch_size * len(tasks),
                          steps=m.num_steps, rules=_rules("sb_last"), repeats=len(m.sharings) * runs))
        if m.independent:
            out.append(_phase(config, "multitask independent models", data=tasks[0], batch_size=m.batch_size,
                              steps=m.num_steps, repeats=len(tasks) * runs))
    if r.enabled:  # each resolution's rate grid; the model its sweep chose is the one reported
        out += [_phase(config, f"multires {size}px S/B", data=target, image_size=size, batch_size=r.batch_size,
                       steps=r.num_steps, rules=_rules("sb_last"), repeats=len(r.get("lrs") or [None]))
                for size in r.resolutions]
    return out


def train_size(name: str, max_train: int | None = None) -> int:
    """Training examples of a dataset name, without reading the data (tfds metadata for other tfds names)."""
    base = name.split("/")[0]
    if base.startswith("tfds:"):
        from modular.data import tfds_source
        base = tfds_source.parse(name)[0]
    size = _KNOWN_TRAIN_SIZES.get(base)
    if size is None and name.startswith("tfds:"):
        import tensorflow_datasets as tfds
        size = int(tfds.builder(base).info.splits["train"].num_examples)
    if size is None:
        raise ValueError(f"The projection knows no training-set size for dataset {name!r}.")
    return min(size, int(max_train)) if max_train else size


def _compat(config) -> list[Phase]:
    """The study's pairs as `study.variants` / `study.incremental_variants` build them (each pair: two networks
    of num_steps steps; incremental pairs run the chosen step count, at most num_steps), the pretrained-IIW
    extractor, and the applications as `apps.run` runs them on every seed."""
    from modular.methods.compat import apps, study
    from modular.methods.compat.schedule import setting_name
    d, cc = config.data, config.compat
    model = ml_collections.ConfigDict(dict(config.model.to_dict(), split=cc.split))
    head = (("head/.*", 1.0),)   # a compat network's task head: everything after the split
    main, _ = study.variants(cc)
    pairs = len(main) + len(study.incremental_variants(cc, setting_name(bool(cc.dcc), bool(cc.rp), bool(cc.iiw))))
    out = []
    if study.uses_pretraining(cc):  # one network on pretrain_data whose extractor starts both networks
        out.append(_phase(config, f"pretrained-IIW extractor on {cc.pretrain_data}", model=model,
                          data=cc.pretrain_data, steps=int(cc.pretrain_steps)))
    out.append(_phase(config, f"network pairs a, b ({pairs} pairs)", model=model, data=d.task_a, repeats=2 * pairs))
    applications = cc.get("applications") or ()
    if "fast_transfer" in applications:
        # every start (each RP-only pair's recombination and the re-initialised head) x every rate, for
        # transfer_epochs epochs over b's fit split (remainders dropped, as transfer_head does)
        fit = train_size(d.task_b, d.get("max_train"))
        fit -= math.ceil(fit * float(d.val_fraction))
        starts = len(cc.fast_transfer_settings) + 1
        out.append(_phase(config, f"fast transfer ({starts} starts x {len(cc.transfer_lrs)} rates)", model=model,
                          data=d.task_b, steps=int(cc.transfer_epochs) * (fit // min(config.batch_size, fit)),
                          rules=None if cc.transfer_train == "all" else head,
                          repeats=starts * len(cc.transfer_lrs)))
    if "cross_arch" in applications:
        settings = len(dict.fromkeys(("independent", cc.cross_arch_setting)))
        steps, head_steps = apps.cross_arch_steps(cc, config.num_steps)
        # both extractors (b's at its own split) end in the adapter in front of heads of a's architecture
        adapted = [ml_collections.ConfigDict(dict(m.to_dict(), head_model=model.to_dict(),
                                                  adapter_width=int(cc.adapter_width)))
                   for m in (model, cc.cross_arch_model)]
        old = int(cc.cross_arch_old_classes)
        for tag, m in zip(("a", f"b ({cc.cross_arch_model.name})"), adapted):
            out.append(_phase(config, f"cross-arch network {tag}, old classes", model=m, data=d.task_a,
                              num_classes=old, steps=steps, repeats=settings))
            out.append(_phase(config, f"cross-arch new head on frozen {tag}", model=m, data=d.task_a,
                              steps=head_steps, rules=head, repeats=settings))
    return out


def _templates(config) -> list[Phase]:
    model = ml_collections.ConfigDict(dict(config.model.to_dict(), name="isometric"))
    tasks = list(config.tasks) if config.mode != "single" else list(config.tasks[:1])
    # multitask trains the tasks with and without the clustering regulariser, then transfers from them
    runs = 2 if config.mode == "multitask" else 1
    out = [_phase(config, f"{config.mode} ({len(tasks)} tasks)", model=model, data=tasks[0],
                  batch_size=config.batch_size * len(tasks), repeats=runs)]
    transfers = {"transfer": len(config.get("transfer_inits") or []),
                 "multitask": len(config.get("transfer_inits") or []) if config.get("multitask_transfer") else 0,
                 "adapt": len(config.get("adapt_methods") or [])}.get(config.mode, 0)
    m3sda = config.mode == "adapt" and "m3sda" in (config.get("adapt_methods") or [])
    if config.mode == "adapt":  # M3SDA counted below; + the supervised upper bound (labels, xi only)
        transfers += 1 - int(m3sda)
    if transfers:
        out.append(_phase(config, "mixture weights on the target", model=model, data=config.tasks[0],
                          steps=config.transfer_steps, rules=_rules("mixture"), repeats=transfers))
    if m3sda:
        # each iteration: step A (classifiers and xi), B (classifiers only), C x generator_steps (xi only)
        from modular.methods.templates.discrepancy import M3SDA
        settings = M3SDA(**config.get("m3sda", {}))
        iterations, n = settings.iterations(config.transfer_steps), int(settings.generator_steps)
        out.append(_phase(config, f"M3SDA steps A + {n} x C (xi)", model=model, data=config.tasks[0],
                          steps=iterations * (1 + n), rules=_rules("mixture")))
        out.append(_phase(config, "M3SDA step B (classifiers)", model=model, data=config.tasks[0],
                          steps=iterations, rules=_rules("last_layer")))
    return out


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _head2toe(config) -> list[Phase]:
    h, d = config.head2toe, config.data
    targets = [d.target] if d.get("target") else list(d.targets)
    batch = h.get("finetune_batch_size") or h.get("batch_size") or config.batch_size
    steps = h.get("finetune_steps") or max(_as_list(h.get("steps", config.num_steps)))
    networks = int(bool(h.get("finetune", True))) + int(bool(h.get("head2toe_ft", True)))
    out = _pretrain(config)
    out += [_phase(config, f"fine-tune on {t}", data=t, batch_size=batch, steps=steps, repeats=networks)
            for t in targets if networks]
    return out


def _tour(config) -> list[Phase]:
    a, tc, cc, targets = config.adapt, config.templates, config.compat, list(config.data.targets)
    out = _pretrain(config)
    method_modes = {"linear": "last_layer", "sb_patch": "sb_last", "full_finetune": "full"}
    for method, mode in method_modes.items():
        if method in config.methods:
            out += [_phase(config, f"{method} on {t}", data=t, batch_size=a.batch_size, steps=a.num_steps,
                           rules=_rules(mode)) for t in targets]
    if "mixture_weights" in config.methods:
        model = ml_collections.ConfigDict(dict(tc.model.to_dict(), name="isometric"))
        out.append(_phase(config, "template bank", model=model, batch_size=tc.batch_size, steps=tc.num_steps))
        out += [_phase(config, f"mixture weights on {t}", model=model, data=t, batch_size=tc.batch_size,
                       steps=tc.transfer_steps, rules=_rules("mixture")) for t in targets]
    out.append(_phase(config, "compat network pairs", data=cc.task_a, batch_size=cc.batch_size, steps=cc.num_steps,
                      repeats=2 * len(cc.settings)))
    return out


def _adapt(config) -> list[Phase]:
    a = config.adapt
    mode = {"linear": "last_layer", "sb_patch": "sb_last", "dw_patch": "dw_last", "mixture": "mixture"}.get(config.method)
    if mode is None:  # head2toe: linear heads on cached features, not a network step
        return []
    return [_phase(config, f"{config.method} (validation grid + final)", batch_size=a.batch_size, steps=a.num_steps,
                   rules=_rules(mode), repeats=len(a.lrs) + 1)]


PHASES: dict[str, Callable] = dict(pretrain=_pretrain, patches=_patches, compat=_compat, templates=_templates,
                                   head2toe=_head2toe, tour=_tour, adapt=_adapt)
UNCOUNTED = {
    "pretrain": "evaluation passes",
    "patches": "evaluation passes; multi-task serving",
    "compat": "the DCC and rotation heads' extra work; incremental pairs "
              "counted at num_steps (they run the step count chosen on validation, at most that); evaluation",
    "templates": "evaluation; per-task mixing of the template bank (the trunk is counted at the summed batch); "
                 "adapt mode: the frozen source's forward passes, M3SDA's second classifier, the BN-statistics "
                 "control and the plain-net baseline",
    "head2toe": "feature extraction and the linear heads' grid on cached features; evaluation",
    "tour": "Head2Toe heads on cached features; evaluation; serving",
    "adapt": "evaluation; Head2Toe heads on cached features (method head2toe has no network step)",
}


# Experiments whose whole comparison repeats for each of `config.seeds` (protocol.seeds).
SEEDED = ("compat", "templates", "patches", "head2toe", "tour")


def seed_count(config) -> int:
    """How many times the experiment runs its phases: its seeds, where it compares methods over seeds."""
    from modular import protocol
    return len(protocol.seeds(config)) if config.get("experiment") in SEEDED else 1


def phases(config) -> list[Phase]:
    """The training phases `config` runs once (per seed, see `seed_count`), by `config.experiment`."""
    name = config.get("experiment")
    if name not in PHASES:
        raise ValueError(f"The projection knows no experiment {name!r}; known: {', '.join(PHASES)}.")
    return PHASES[name](config)
