"""Every config key can be overridden from the command line: None-valued keys keep their type, lists parse."""
import importlib
import subprocess
import sys

import ml_collections
import pytest
from ml_collections import config_dict

from cli_helpers import ROOT, env
from experiments.run import EXPERIMENTS

pytestmark = pytest.mark.unit


def untyped_nones(cfg, prefix=""):
    """Keys holding a bare None: ml_collections cannot tell their type, so no override of them parses."""
    out = []
    for key in cfg.keys():
        value = cfg[key]
        if isinstance(value, ml_collections.ConfigDict):
            out += untyped_nones(value, f"{prefix}{key}.")
        elif value is None and not isinstance(cfg._fields[key], config_dict.FieldReference):
            out.append(prefix + key)
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("arg", ["", "smoke", "full"])
def test_no_config_key_is_an_untyped_none(name, arg):
    assert untyped_nones(importlib.import_module(f"configs.{name}").get_config(arg)) == []


def dry_run(*overrides, config="configs/head2toe.py"):
    return subprocess.run([sys.executable, "-m", "experiments.run", f"--config={config}", "--workdir=unused",
                           "--dry_run", *overrides], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("value", ["(0.3, 0.1, 0.01)", "[0.3, 0.1, 0.01]"])
def test_list_keys_are_overridable(value):
    proc = dry_run(f"--config.head2toe.lrs={value}", "--config.data.targets=digits,rotation",
                   "--config.data.max_train=100")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    lrs = out[out.index("  lrs:"):].splitlines()[1:4]
    assert [line.strip() for line in lrs] == ["- 0.3", "- 0.1", "- 0.01"]
    targets = out[out.index("  targets:"):].splitlines()[1:3]
    assert [line.strip() for line in targets] == ["- digits", "- rotation"]
    assert "dry run" in out


def test_a_list_of_the_wrong_kind_is_one_sentence():
    proc = dry_run("--config.head2toe.lrs=abc")
    assert proc.returncode == 1
    from configs import head2toe as h2t_config
    default = list(h2t_config.get_config().head2toe.lrs)     # the example is the key's own default
    assert proc.stderr.strip() == (f"error: --config.head2toe.lrs must be a list of numbers like {default}, "
                                   f"got ['abc'].")
