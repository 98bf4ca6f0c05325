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
    for path in ("modular/adapters.py", "experiments/adapt.py"):
        with open(os.path.join(root, path)) as f:
            assert not re.search(r"modular\.methods|from modular import methods", f.read()), path


def test_an_uninstalled_library_says_how_to_install(monkeypatch):
    monkeypatch.setattr(adapters, "_installed", lambda: {})
    monkeypatch.setattr(adapters, "_REGISTRY", {})
    with pytest.raises(ValueError, match=r"not installed \(run `pip install -e \.`"):
        adapters.get("head2toe")
