"""Supervised pretraining of a backbone on config.data.name (the source model the other methods reuse)."""
from __future__ import annotations

import jax
import ml_collections

from modular import data, params as P, supervised, train
from modular.projection.phases import Phase, pretrain_phases


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    clf, ds = supervised.pretrained_backbone(config, workdir, streaming=True)  # large tfds sets stream
    params = clf.variables["params"]
    # With --config.model.init and a classifier that fits, nothing trains (supervised.classifier_from_weights).
    fit = clf.fit or train.FitResult(state=None, history=[], resumed_from=None, seconds=0.0)
    steps_run = config.num_steps - (fit.resumed_from or 0) if clf.fit else 0
    results = dict(
        accuracy=clf.evaluate(ds, "test"),
        train_accuracy=clf.evaluate(ds, "train", max_examples=2000),
        dataset=ds.name, num_classes=ds.num_classes, num_train=ds.num_train, num_test=ds.num_test,
        streamed=isinstance(ds, data.StreamingDataset),
        model=config.model.to_dict(),
        params={"total": P.count(params), "extractor": P.count(params["extractor"]), "head": P.count(params["head"])},
        steps=config.num_steps, resumed_from=fit.resumed_from,
        images_per_sec=steps_run * config.batch_size / max(fit.seconds, 1e-9) if steps_run else None,
        history=fit.history,
    )
    if jax.process_index() == 0:
        print(f"pretrain {ds.name}: test accuracy {100 * results['accuracy']:.2f}% "
              f"({results['params']['total']:,} parameters)", flush=True)
    return results


# The projection (`python -m experiments.project`, modular.projection.phases): the training phases this
# experiment runs, and what they leave out of the count.
UNCOUNTED = "evaluation passes"


def phases(config) -> list[Phase]:
    return pretrain_phases(config)
