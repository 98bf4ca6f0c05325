"""Your data, your backbone: adapt a saved backbone to two image folders with two methods, then predict
from the bank through the command and in process."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from configs import adapt as adapt_config
from configs import pretrain as pretrain_config
from experiments import run as runner
from modular import data, predict as predict_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root, classes, per_class=(24, 8)):
    """root/{train,test}/<digit name>/*.png from scikit-learn's real digits."""
    x, y = load_digits(return_X_y=True)
    names = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
    for c in classes:
        images = x[y == c][: sum(per_class)].reshape(-1, 8, 8)
        for split, (lo, hi) in (("train", (0, per_class[0])), ("test", (per_class[0], sum(per_class)))):
            os.makedirs(root / split / names[c], exist_ok=True)
            for i, img in enumerate(images[lo:hi]):
                Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / split / names[c] / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("backbone")
    runner.run(pretrain_config.get_config("smoke"), str(workdir))
    return str(workdir)


@pytest.mark.e2e
def test_two_folders_two_methods_one_bank_and_predictions(backbone, tmp_path):
    workdir = tmp_path / "adapt_runs"
    bank = workdir / "bank"
    folders = {"abc": write_folder(tmp_path / "abc", (0, 1, 2)), "def": write_folder(tmp_path / "def", (3, 4, 5))}
    folders["def_sb"] = folders["def"]
    runs = {}
    for task, method in (("abc", "sb_patch"), ("def", "head2toe"), ("def_sb", "sb_patch")):
        config = adapt_config.get_config("smoke")
        config.update(dict(backbone=backbone, method=method, task=task))
        config.data.name = f"folder:{folders[task]}"
        runs[task] = runner.run(config, str(workdir))
        assert runs[task]["method"] == method and 0.0 <= runs[task]["accuracy"] <= 1.0
    manifest = json.load(open(bank / "manifest.json"))["tasks"]
    assert set(manifest) == {"abc", "def", "def_sb"}
    assert manifest["abc"]["classes"] == ["one", "two", "zero"] and manifest["def"]["num_classes"] == 3
    assert manifest["abc"]["chosen"]["lr"] in adapt_config.get_config("smoke").adapt.lrs
    for entry in manifest.values():
        assert os.path.getsize(bank / entry["file"]) == entry["bytes"]
    assert json.load(open(workdir / "results.json"))["task"] == "def_sb"
    assert runs["abc"]["bank_file"] == os.path.join("bank", manifest["abc"]["file"])

    predictor = predict_lib.BankPredictor(str(workdir))   # a workdir stands for its bank/ folder
    for task in ("abc", "def"):  # one command per method
        out = subprocess.run([sys.executable, "-m", "experiments.predict", f"--bank={bank}", f"--task={task}",
                              f"--images={folders[task] / 'test'}", f"--csv={tmp_path / task}.csv"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
        assert out.returncode == 0, out.stderr[-2000:]
        rows = [line.split(",") for line in open(tmp_path / f"{task}.csv").read().split()[1:]]
        assert len(rows) == 8 * len(manifest[task]["classes"])
        # The command's labels are the in-process model's, and scoring them reproduces the reported accuracy.
        size, channels = predictor.image_spec(task)
        images = data.read_images([r[0] for r in rows], image_size=size, channels=channels)
        np.testing.assert_array_equal(predictor.predict(task, images), [int(r[1]) for r in rows])
        truth = [os.path.basename(os.path.dirname(r[0])) for r in rows]
        assert np.mean([r[2] == t for r, t in zip(rows, truth)]) == pytest.approx(runs[task]["accuracy"])

    # A batch mixing three tasks and two methods gives each example its own task's prediction (the two
    # S/B patches of one class count in one jitted call, Head2Toe on its own).
    sample = images[:4]
    order = ["def"] * 4 + ["abc"] * 4 + ["def_sb"] * 4
    labels = predictor.predict_mixed(order, np.concatenate([sample, sample, sample]))
    for i, task in enumerate(("def", "abc", "def_sb")):
        np.testing.assert_array_equal(labels[4 * i:4 * i + 4], predictor.predict(task, sample))


def test_predict_command_bad_input_is_one_sentence(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.predict", f"--bank={tmp_path}", "--task=x",
                          f"--images={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "holds no bank" in out.stderr


def test_adapt_needs_a_backbone_and_a_known_method(tmp_path):
    config = adapt_config.get_config("smoke")
    with pytest.raises(ValueError, match="config.backbone is empty"):
        runner.run(config, str(tmp_path / "a"))
    config.backbone, config.method = str(tmp_path), "prompt_tuning"
    with pytest.raises(ValueError, match="Unknown adapt method 'prompt_tuning'"):
        runner.run(config, str(tmp_path / "b"))


def test_mixture_patch_needs_an_isometric_backbone_with_templates():
    import jax
    from modular import models, params as P
    from modular.methods import patches
    model = models.build(models.default_config("isometric"), 10)
    params = models.init(model, jax.random.key(0), (1, 16, 16, 1))["params"]
    patches.check_applicable(params, "mixture")
    trains = [p for p in P.paths(params) if P.match_rules(p, patches.lr_rules("mixture"), 0.0)]
    assert "extractor/mixture" in trains and not any("templates" in p for p in trains)
    resnet = models.init(models.build(models.default_config("resnet"), 10), jax.random.key(0), (1, 16, 16, 1))
    with pytest.raises(ValueError, match="mixture patches an isometric model"):
        patches.check_applicable(resnet["params"], "mixture")
