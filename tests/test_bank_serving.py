"""Serving from a bank knows no method: an entry names the module that serves it, and misuse is one sentence."""
import json
import sys

import numpy as np
import pytest

from modular import bank, predict


def _bank(tmp_path, entries):
    (tmp_path / bank.MANIFEST).write_text(json.dumps({"tasks": entries}))
    return str(tmp_path)


def _server_module(tmp_path, monkeypatch, name, body):
    (tmp_path / f"{name}.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


NEW_METHOD = '''
import numpy as np
from modular import bank

def load_task(entry, bank_dir, backbone, *, allow_other_weights=False):
    scale = float(entry["scale"])
    one = lambda images: scale * np.asarray(images).reshape(len(images), -1)[:, :3]
    def together(members, ids, images):
        flat = np.asarray(images).reshape(len(images), -1)[:, :3]
        return np.stack([m.payload * x for m, x in zip([members[i] for i in ids], flat)])
    return bank.ServedTask(logits=one, group="same", serve_group=together, payload=scale)
'''


def test_a_new_method_serves_from_a_bank_without_touching_the_core(tmp_path, monkeypatch):
    _server_module(tmp_path, monkeypatch, "my_method_serving", NEW_METHOD)
    entries = {t: dict(server="my_method_serving", scale=s, backbone="none", file=f"{t}.bin")
               for t, s in (("up", 1.0), ("down", -1.0))}
    predictor = predict.BankPredictor(_bank(tmp_path, entries))
    monkeypatch.setattr(predictor, "_backbone", lambda path: None)
    images = np.array([[0.0, 2.0, 1.0], [3.0, 1.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    assert predictor.predict("up", images).tolist() == [1, 0, 2]
    assert predictor.predict("down", images).tolist() == [0, 2, 0]
    mixed = predictor.predict_mixed(["up", "down", "up"], images)          # one group: served together
    assert mixed.tolist() == [1, 2, 2]


@pytest.mark.parametrize("entry,body,message", [
    (dict(file="a.bin"), None, "names no server module"),
    (dict(server="no_such_module_here", file="a.bin"), None, "cannot be imported"),
    (dict(server="server_without_loader", file="a.bin"), "x = 1\n", "has no load_task"),
    (dict(server="server_wrong_return", file="a.bin"),
     "def load_task(entry, bank_dir, backbone, *, allow_other_weights=False):\n    return lambda x: x\n",
     "not a bank.ServedTask"),
])
def test_bad_server_entries_are_one_sentence(tmp_path, monkeypatch, entry, body, message):
    if body is not None:
        _server_module(tmp_path, monkeypatch, entry["server"], body)
    with pytest.raises((ValueError, TypeError), match=message) as err:
        bank.load_served(dict(entry, backbone="none"), str(tmp_path), None, task="a")
    assert len(str(err.value).rstrip(".").split(". ")) == 1


def test_serving_code_in_the_core_imports_no_paper():
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("predict.py", "bank.py"):
        with open(os.path.join(root, "modular", name)) as f:
            assert not re.search(r"modular\.methods|from modular import methods", f.read()), name
