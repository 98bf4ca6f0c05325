"""The bank adapters of the transfer modes (`modular.adapters`): one signature, found by method name.

  adapt(backbone, dataset, config, *, seed, workdir, bank_path, meta) -> bank.Adapted

Reads `config.adapt` (num_steps, batch_size, and either `lrs`, a grid chosen on a validation split of
`config.data.val_fraction` of the training data and then retrained on all of it, or one `lr`),
`config.optim` and `config.log_every`; the model config is the backbone's.
"""
from __future__ import annotations

import os

from modular import backbone as backbone_lib, bank, data, optim
from modular.data import splits
from modular.methods.patches import serving
from modular.methods.patches.modes import lr_rules
from modular.methods.patches.transfer import accuracy, adapt, transfer
from modular.projection.phases import Phase, phase


class PatchAdapter:
    """Adapts with one transfer mode (called as an adapter); the record's `model` is the adapted classifier,
    which `serving.serve_mixed` checks a mixed-task batch of the files against."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, backbone: backbone_lib.Backbone, dataset: data.Dataset, config, *, seed: int, workdir: str,
                 bank_path: str, meta) -> bank.Adapted:
        a = config.adapt
        kw = dict(model_cfg=backbone.model_cfg, num_steps=a.num_steps, batch_size=a.batch_size, seed=seed,
                  log_every=config.log_every)
        chosen, lr, final_dir = {}, a.get("lr"), workdir
        if "lrs" in a:  # choose the learning rate on validation, then train on all the training data
            val_ds = splits.validation_split(dataset, config.data.val_fraction, seed)
            val = {}
            for grid_lr in a.lrs:
                clf, _ = transfer(backbone.classifier, val_ds, self.mode,
                                  optim_cfg=optim.override(config.optim, lr=float(grid_lr)),
                                  workdir=os.path.join(workdir, f"val_lr{grid_lr:g}"), **kw)
                val[f"{grid_lr:g}"] = accuracy(clf.model, clf.variables, val_ds.test_images, val_ds.test_labels)
            best = max(val, key=val.get)
            print(f"[adapt] validation accuracy by learning rate: {val}; chosen {best}", flush=True)
            lr, final_dir, chosen = float(best), os.path.join(workdir, "final"), dict(lr=float(best), val_accuracy=val)
        adapted, clf = adapt(backbone.classifier, dataset, self.mode, optim_cfg=optim.override(config.optim, lr=lr),
                             workdir=final_dir, bank_path=bank_path, meta=meta, **kw)
        adapted.server, adapted.entry, adapted.model = serving.__name__, dict(mode=self.mode, chosen=chosen), clf
        return adapted

    def phases(self, config) -> list[Phase]:
        a = config.adapt
        grid = len(a.lrs) if "lrs" in a else 0
        name = f"{config.method} (validation grid + final)" if grid else str(config.method)
        return [phase(config, name, batch_size=a.batch_size, steps=a.num_steps, rules=lr_rules(self.mode),
                      repeats=grid + 1)]


linear = PatchAdapter("last_layer")
sb_patch = PatchAdapter("sb_last")
dw_patch = PatchAdapter("dw_last")
mixture = PatchAdapter("mixture")
full_finetune = PatchAdapter("full")
