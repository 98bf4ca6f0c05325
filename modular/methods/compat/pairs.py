"""Compatible components as a study another experiment runs by name (`modular.adapters`' `modular.studies`
group, name 'compat'; the tour closes with it): one pair per setting, trained with alternating minibatches
(`training.train_and_evaluate`), then extractors and heads recombined on the test sets without fine-tuning.

Reads `config.compat` (task_a, task_b, settings, num_steps, batch_size, max_train), `config.data` (image_size,
channels), `config.model`, `config.optim`; the options are the study's defaults (`training.default_options`).
"""
from __future__ import annotations

from typing import Callable

from modular import data
from modular.methods.compat import report
from modular.methods.compat.recombine import summary
from modular.methods.compat.training import default_options, parse_setting, setting_name, train_and_evaluate
from modular.projection.phases import Phase, phase


class Recombination:
    """`study(config, *, seed, log) -> dict`: each setting's recombination accuracy, summary and table row."""

    def __call__(self, config, *, seed: int, log: Callable[[str], None] = print) -> dict:
        cc, d = config.compat, config.data
        ds_a, ds_b = (data.load(n, image_size=d.image_size, channels=d.channels, seed=seed, max_train=cc.max_train)
                      for n in (cc.task_a, cc.task_b))
        ds_a, ds_b, _ = data.align_classes(ds_a, ds_b)   # one label id = one class in both tasks
        settings, rows = {}, []
        for setting in map(parse_setting, cc.settings):
            name = setting_name(*setting)
            _, res = train_and_evaluate(ds_a, ds_b, setting=setting, options=default_options(), model_cfg=config.model,
                                        optim_cfg=config.optim, num_steps=cc.num_steps, batch_size=cc.batch_size,
                                        seed=seed, log=log)
            settings[name] = dict(summary(res), chance=res["chance"])
            rows.append({c: report.setting_row(name, res)[c] for c in report.TABLE_COLUMNS})
        return dict(task_a=ds_a.name, task_b=ds_b.name, settings=settings, table=rows,
                    recombination_accuracy={k: v["recombination_accuracy"] for k, v in settings.items()})

    def check(self, config) -> None:
        for name in config.compat.settings:
            parse_setting(name)

    def phases(self, config) -> list[Phase]:
        cc = config.compat
        return [phase(config, "compat network pairs", data=cc.task_a, batch_size=cc.batch_size, steps=cc.num_steps,
                      repeats=2 * len(cc.settings))]


recombination = Recombination()
