"""One adapt signature, found by method name: a new method registers without touching the core."""
import os
import re
import sys

import pytest

from modular import adapters, bank

NEW_METHOD = '''
from modular import bank

def adapt(backbone, dataset, config, *, seed, workdir, bank_path, meta):
    return bank.Adapted(accuracy=config["acc"], trainable=1, stored=1, file_bytes=4, seconds=0.0,
                        full_model_bytes=8, server="my_serving", entry=dict(chosen=dict(seed=seed)))

def wrong(backbone, dataset, config, *, seed, workdir, bank_path, meta):
    return 0.5

class Prepared:
    def __call__(self, backbone, dataset, config, *, seed, workdir, bank_path, meta):
        return adapt(backbone, dataset, config, seed=seed, workdir=workdir, bank_path=bank_path, meta=meta)

    def prepare(self, backbone, source, config, *, seed, workdir):
        return ("prepared", backbone, source, seed, workdir)

    def prepare_phases(self, config):
        return ["bank"]

    def phases(self, config):
        return ["task"]

prepared = Prepared()

def study(config, *, seed, log=print):
    log("studied")
    return dict(seed=seed, value=config["value"])

def check(config):
    if config["value"] < 0:
        raise ValueError("value must be >= 0.")

study.check, study.phases = check, lambda config: ["pairs"]
'''


def test_a_registered_module_adapts_by_name(tmp_path, monkeypatch):
    (tmp_path / "my_adapter.py").write_text(NEW_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_adapter", raising=False)
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))
    adapters.register("mine", "my_adapter:adapt")
    assert "mine" in adapters.methods() and adapters.phases("mine", None) == []
    out = adapters.adapt("mine", None, None, {"acc": 0.75}, seed=3, workdir=str(tmp_path), bank_path="x", meta={})
    assert isinstance(out, bank.Adapted) and out.accuracy == 0.75 and out.entry["chosen"] == {"seed": 3}
    adapters.register("wrong", "my_adapter:wrong")
    with pytest.raises(TypeError, match="not a bank.Adapted"):
        adapters.adapt("wrong", None, None, {}, seed=0, workdir="", bank_path="", meta={})


def test_optional_hooks_and_studies_by_name(tmp_path, monkeypatch):
    # prepare (what a method adapts on, made once), its phases, and a study run by name: the tour's hooks
    (tmp_path / "my_adapter.py").write_text(NEW_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_adapter", raising=False)
    monkeypatch.setattr(adapters, "_REGISTRY", dict(adapters._REGISTRY))
    monkeypatch.setattr(adapters, "_STUDIES", dict(adapters._STUDIES))
    adapters.register("mine", "my_adapter:adapt")
    adapters.register("prepared", "my_adapter:prepared")
    assert adapters.prepare("mine", "bb", "src", {}, seed=1, workdir="w") == "bb"       # none: the backbone itself
    assert adapters.prepare("prepared", "bb", "src", {}, seed=1, workdir="w") == ("prepared", "bb", "src", 1, "w")
    assert adapters.prepare_phases("mine", {}) == [] and adapters.prepare_phases("prepared", {}) == ["bank"]
    assert adapters.phases("prepared", {}) == ["task"]
    adapters.register_study("mine", "my_adapter:study")
    assert "mine" in adapters.studies() and adapters.study_phases("mine", {}) == ["pairs"]
    adapters.check_study("mine", {"value": 1})
    with pytest.raises(ValueError, match="value must be"):
        adapters.check_study("mine", {"value": -1})
    logged = []
    assert adapters.study("mine")({"value": 2}, seed=5, log=logged.append) == dict(seed=5, value=2)
    assert logged == ["studied"]
    with pytest.raises(ValueError, match="Unknown study 'nope'"):
        adapters.study("nope")


@pytest.mark.parametrize("call, message", [
    (lambda: adapters.get("prompt_tuning"), "Unknown adapt method 'prompt_tuning'"),
    (lambda: adapters.register("m", "no_colon_here"), "is not 'package.module:attribute'"),
])
def test_misuse_is_one_sentence(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert len(str(err.value).rstrip(".").split(". ")) == 1


def test_every_library_method_resolves_and_the_core_names_no_paper():
    # the library's own methods come from its setup.py entry points (a missing one is an install bug)
    assert {"linear", "sb_patch", "dw_patch", "mixture", "full_finetune", "head2toe",
            "mixture_weights"} <= set(adapters.methods())
    for method in adapters.methods():
        assert callable(adapters.get(method)), method
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert "compat" in adapters.studies() and callable(adapters.study("compat"))
    for path in ("modular/adapters.py", "modular/bank.py", "experiments/adapt.py", "experiments/tour.py"):
        with open(os.path.join(root, path)) as f:
            assert not re.search(r"modular\.methods|from modular import methods", f.read()), path


def test_an_uninstalled_library_says_how_to_install(monkeypatch):
    monkeypatch.setattr(adapters, "_installed", lambda: {})
    monkeypatch.setattr(adapters, "_REGISTRY", {})
    with pytest.raises(ValueError, match=r"not installed \(run `pip install -e \.`"):
        adapters.get("head2toe")
