"""Install `modular`: the library plus `experiments` and `configs` importable from the repo root."""
from setuptools import find_packages, setup

setup(
    name="modular",
    version="0.1.0",
    description="Reusable network components in JAX/Flax: compatible components, template mixtures, "
                "model patches and Head2Toe on one parameter-tree algebra.",
    python_requires=">=3.10",
    packages=find_packages(include=["modular", "modular.*", "experiments", "experiments.*",
                                    "configs", "configs.*", "benchmarks", "benchmarks.*"]),
    install_requires=[
        "jax>=0.4.35,<0.11",
        "flax>=0.10,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "ml-collections>=0.1.1",
        "tensorflow-cpu>=2.16,<2.22",
        "tensorboard>=2.16",                   # the event files (modular/scalars.py), and to view them
        "etils[epath]",                        # local or gs:// workdir paths (orbax uses it too)
        "tensorflow-datasets>=4.9.6,<4.10",
        "importlib_resources",                 # tensorflow-datasets imports it but does not declare it
        "absl-py",
        "numpy",
        # ml_dtypes 0.7.0 (JAX's bfloat16/float8 types) takes 1.3 s to import (numpy's PyUFunc_AddLoop, once per
        # loop it registers); 0.6.0 takes 0.01 s. Every process pays it: each run, each CLI test's subprocess.
        "ml_dtypes>=0.5,<0.7",
        "scikit-learn>=1.3",
        "mlxtend>=0.23",
        "matplotlib>=3.7",
        "pillow>=9.1",                         # the user's image folders (Image.Resampling)
        "filelock",                            # JAX's persistent compilation cache reads entries under a lock
    ],
    # Each paper's adapters and studies, found by name by modular.adapters (the core names no paper):
    # "name = module:attr".
    entry_points={"modular.adapters": [
        "linear = modular.methods.patches.adapter:linear",                # model patches: the last layer
        "sb_patch = modular.methods.patches.adapter:sb_patch",            # BN scale-and-bias + last layer
        "dw_patch = modular.methods.patches.adapter:dw_patch",            # depthwise kernels + last layer
        "mixture = modular.methods.patches.adapter:mixture",              # mixture weights + S/B + last layer
        "full_finetune = modular.methods.patches.adapter:full_finetune",  # every weight
        "head2toe = modular.methods.head2toe.adapter:adapt_task",         # feature selection + linear head
        "mixture_weights = modular.methods.templates.bank:adapt_task",    # a new task on frozen templates
    ], "modular.studies": [
        "compat = modular.methods.compat.pairs:recombination",            # pairs recombined without fine-tuning
    ]},
    extras_require={
        # torch (the CPU wheel here) writes the reference ResNet-50/MobileNetV2 state dicts of tests/test_convert.py
        "test": ["pytest>=7", "pytest-xdist>=3", "torch==2.13.0"],
        "bench": ["torch==2.13.0"],
    },
)
