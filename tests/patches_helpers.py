"""What the model-patch tests share (tests/test_patches*.py): a tiny MobileNetV2 source on 8x8 digits and
the optimizer its patches train with. A module of its own so that each test file builds the source once
(a module fixture) and pytest-xdist's --dist loadscope can run the files on different workers."""
import jax
import ml_collections
import numpy as np

from modular import data, models, optim, supervised
from modular.methods import patches

CFG = ml_collections.ConfigDict(dict(name="mobilenet_v2", width=4, expansion=2, split="final"))
OPTIM = ml_collections.ConfigDict(dict(name="adam", lr=1e-2, schedule="constant", lr_mults=[], default_mult=1.0))


def mode_optim(mode):
    return optim.override(OPTIM, lr_mults=patches.lr_rules(mode), default_mult=0.0)


def tiny_source():
    """(digits at 8x8, 64 training examples; a randomly initialised Classifier on CFG)."""
    ds = data.load("digits", image_size=8, max_train=64)
    model = models.build(CFG, ds.num_classes)
    variables = jax.tree.map(np.asarray, models.init(model, jax.random.key(0), (1, 8, 8, 1)))
    return ds, supervised.Classifier(model, variables, None)
