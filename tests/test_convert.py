"""Published weights load into the library's models and compute what the source framework computes.

torchvision's ResNet-50 and MobileNetV2 are written here in torch with torchvision's module names and
published parameter counts (torchvision's 0.28 wheel here links CUDA libraries, so it cannot be imported;
torch itself is the CPU build). big_vision has no package: its ViT is a numpy forward pass written here
from big_vision's published structure, and the `.npz` is made from random parameters with its names.
Everything runs in eval mode with randomised BatchNorm statistics and affine parameters, so a statistics
or layout mix-up changes the logits.
"""
import os

import jax
import numpy as np
import pytest

from modular import models, pretrained

torch = pytest.importorskip("torch")
nn = torch.nn


def _conv_bn(cin, cout, k, stride=1, groups=1):
    return [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class TorchBottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 1)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3, stride)
        self.conv3, self.bn3 = _conv_bn(planes, planes * 4, 1)
        self.downsample = (nn.Sequential(*_conv_bn(cin, planes * 4, 1, stride))
                           if stride != 1 or cin != planes * 4 else None)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, planes, 3, stride)
        self.conv2, self.bn2 = _conv_bn(planes, planes, 3)
        self.downsample = nn.Sequential(*_conv_bn(cin, planes, 1, stride)) if stride != 1 or cin != planes else None

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(nn.Module):
    """torchvision.models.resnet{18,50} (v1.5: the stride on the 3x3 conv), its parameter names."""

    def __init__(self, depth=50, num_classes=1000):
        super().__init__()
        block, counts, mult = {50: (TorchBottleneck, (3, 4, 6, 3), 4), 18: (TorchBasicBlock, (2, 2, 2, 2), 1)}[depth]
        self.conv1, self.bn1 = _conv_bn(3, 64, 7, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, n in enumerate(counts):
            blocks = []
            for b in range(n):
                blocks.append(block(cin, 64 * 2 ** i, (1 if i == 0 else 2) if b == 0 else 1))
                cin = 64 * 2 ** i * mult
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(x.mean((2, 3)))


def _conv_bn_relu6(cin, cout, k, stride=1, groups=1):
    return nn.Sequential(*_conv_bn(cin, cout, k, stride, groups), nn.ReLU6())


class TorchInvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = cin * t
        layers = [_conv_bn_relu6(cin, hidden, 1)] if t != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden), *_conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TorchMobileNetV2(nn.Module):
    """torchvision.models.mobilenet_v2 at width 1.0, its parameter names (dropout is identity in eval)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        features, cin = [_conv_bn_relu6(3, 32, 3, 2)], 32
        for t, c, n, s in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                           [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(n):
                features.append(TorchInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def randomised(net, seed=0):
    """Random weights everywhere, BatchNorm statistics and affine parameters included; eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * np.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


def like(model, image_size=32, fill=7.0):
    """The model's variables filled with `fill`, from shapes alone (a jitted init of ResNet-50 compiles for a
    minute on 2 cores); loading must replace every one of them."""
    shapes = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, image_size, image_size, 3)))
    return jax.tree.map(lambda s: np.full(s.shape, fill, s.dtype), shapes)


def _library_logits(name, path, num_classes, x_nchw, split=None):
    cfg = models.default_config(name)
    cfg.input_norm = "imagenet"
    if split:
        cfg.split = split
    model = models.build(cfg, num_classes)
    variables, report = pretrained.load(like(model), str(path), cfg)
    logits = jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x_nchw.transpose(0, 2, 3, 1))
    return np.asarray(logits), report


@pytest.mark.parametrize("name, net, params, split", [
    ("resnet_imagenet", lambda: TorchResNet(50, num_classes=10), 23_528_522, "stage3"),
    ("mobilenet_v2_imagenet", lambda: TorchMobileNetV2(num_classes=10), 2_236_682, "stage5"),
])
def test_torchvision_weights_give_torchvision_logits(tmp, name, net, params, split):
    net = randomised(net())
    # torchvision publishes 25,557,032 (ResNet-50) and 3,504,872 (MobileNetV2) parameters at 1000 classes.
    assert sum(p.numel() for p in net.parameters()) == params
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32)).astype(np.float32)   # images in [0, 1]
    mean, std = (np.array(v, np.float32)[:, None, None] for v in ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    with torch.no_grad():   # torchvision's preprocessing; the library's model normalises (input_norm='imagenet')
        expected = net(torch.from_numpy((x - mean) / std)).numpy()
    path = tmp / f"{name}.pth"
    torch.save(net.state_dict(), path)
    # A split inside the network: the head's stages load too, wherever the split falls.
    logits, report = _library_logits(name, path, 10, x, split=split)
    assert not report["kept"] and not report["unused"] and not report["reinitialised"]
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    # BN statistics matter: a model that ignored them would not match.
    assert np.abs(expected).max() > 0.1


def test_another_class_count_reinitialises_only_the_classifier(tmp):
    net = randomised(TorchMobileNetV2(num_classes=10))
    path = tmp / "mnv2_10.pth"
    torch.save(net.state_dict(), path)
    cfg = models.default_config("mobilenet_v2_imagenet")
    variables, report = pretrained.load(like(models.build(cfg, 3)), str(path), cfg)
    assert report["reinitialised"] == ["params/head/classifier/bias", "params/head/classifier/kernel"]
    described = pretrained.describe(report, str(path))
    assert "re-initialised" in described and "set --config.model.input_norm=imagenet" in described
    head = variables["params"]["head"]["classifier"]
    assert head["kernel"].shape == (1280, 3) and np.all(head["kernel"] == 7.0) and np.all(head["bias"] == 7.0)
    np.testing.assert_array_equal(variables["params"]["extractor"]["final"]["conv"]["kernel"][0, 0],
                                  net.features[18][0].weight.detach().numpy()[:, :, 0, 0].T)
    np.testing.assert_array_equal(variables["batch_stats"]["extractor"]["stage7"]["block0"]["bn_dw"]["var"],
                                  net.features[17].conv[1][1].running_var.numpy())


def test_resnet18_weights_into_resnet50_is_one_sentence(tmp):
    path = tmp / "r18.pth"
    torch.save(TorchResNet(18).state_dict(), path)
    cfg = models.default_config("resnet_imagenet")
    variables = like(models.build(cfg, 1000))
    with pytest.raises(pretrained.PretrainedMismatchError) as e:
        pretrained.load(variables, str(path), cfg)
    msg = str(e.value)
    assert msg.count(". ") == 0 and msg.endswith(".") and "r18.pth" in msg and "resnet_imagenet" in msg
    assert "stage1/block0/conv1/kernel' is 3x3x64x64 where the model has 1x1x64x64" in msg
    assert "it lacks 'params/extractor/stage1/block0/bn3/" in msg   # what the smaller network lacks
    # A depth-18 model takes it.
    cfg.depth = 18
    _, report = pretrained.load(like(models.build(cfg, 1000)), str(path), cfg)
    assert not report["kept"] and not report["unused"]


def test_other_files_are_one_sentence(tmp):
    cfg = models.default_config("resnet_imagenet")
    variables = {"params": {}}
    torch.save({"features.0.0.weight": torch.zeros(1)}, tmp / "other.pth")
    np.savez(tmp / "other.npz", a=np.zeros(1))
    (tmp / "w.txt").write_text("x")
    for path, error in [(tmp / "missing.pth", pretrained.WeightsFileError), (tmp / "w.txt", pretrained.WeightsFileError),
                        (tmp / "other.pth", pretrained.ConversionError), (tmp / "other.npz", pretrained.ConversionError)]:
        with pytest.raises(error, match=r"^[^\n]*\.$"):
            pretrained.load(variables, str(path), cfg)
    with pytest.raises(pretrained.ConversionError, match="loads into resnet_imagenet or mobilenet_v2_imagenet"):
        pretrained.load(variables, str(tmp / "other.pth"), models.default_config("vit"))


# --- big_vision ViT: a numpy forward pass from big_vision's published structure -------------------------

def _layer_norm(x, p, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):   # flax's nn.gelu default: the tanh approximation
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def _attention(x, p):
    q, k, v = (np.einsum("nlw,whd->nlhd", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    y = np.einsum("nhqk,nkhd->nqhd", weights, v)
    return np.einsum("nqhd,hdw->nqw", y, p["out"]["kernel"]) + p["out"]["bias"]


def big_vision_vit_forward(p, image, patch, pool):
    """big_vision's vit._Model in eval mode: patchify, + posemb, [cls], pre-LN blocks, encoder_norm, pool, head."""
    n, h, w, c = image.shape
    tiles = image.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    x = tiles.reshape(n, -1, patch * patch * c) @ p["embedding"]["kernel"].reshape(-1, p["embedding"]["kernel"].shape[-1])
    x = x + p["embedding"]["bias"] + p["pos_embedding"]
    if pool == "tok":
        x = np.concatenate([np.broadcast_to(p["cls"], (n, 1, x.shape[-1])), x], 1)
    t = p["Transformer"]
    for i in range(len([k for k in t if k.startswith("encoderblock_")])):
        b = t[f"encoderblock_{i}"]
        x = x + _attention(_layer_norm(x, b["LayerNorm_0"]), b["MultiHeadDotProductAttention_0"])
        mlp = b["MlpBlock_0"]
        y = _gelu(_layer_norm(x, b["LayerNorm_1"]) @ mlp["Dense_0"]["kernel"] + mlp["Dense_0"]["bias"])
        x = x + y @ mlp["Dense_1"]["kernel"] + mlp["Dense_1"]["bias"]
    x = _layer_norm(x, t["encoder_norm"])
    x = x[:, 0] if pool == "tok" else x.mean(1)
    return x @ p["head"]["kernel"] + p["head"]["bias"]


def random_big_vision_vit(rng, *, width, depth, heads, mlp, patch, tokens, classes, pool):
    r = lambda *shape, s=1.0: (rng.normal(size=shape) * s).astype(np.float32)
    ln = lambda: {"scale": 1 + r(width, s=0.2), "bias": r(width, s=0.2)}
    dense = lambda i, o: {"kernel": r(i, o, s=1 / np.sqrt(i)), "bias": r(o, s=0.1)}
    d = width // heads
    attention = lambda: {**{n: {"kernel": r(width, heads, d, s=1 / np.sqrt(width)), "bias": r(heads, d, s=0.1)}
                            for n in ("query", "key", "value")},
                         "out": {"kernel": r(heads, d, width, s=1 / np.sqrt(width)), "bias": r(width, s=0.1)}}
    p = {"embedding": {"kernel": r(patch, patch, 3, width, s=1 / patch), "bias": r(width, s=0.1)},
         "pos_embedding": r(1, tokens, width, s=0.5), "head": dense(width, classes),
         "Transformer": {"encoder_norm": ln(), **{f"encoderblock_{i}": {
             "LayerNorm_0": ln(), "LayerNorm_1": ln(), "MultiHeadDotProductAttention_0": attention(),
             "MlpBlock_0": {"Dense_0": dense(width, mlp), "Dense_1": dense(mlp, width)}} for i in range(depth)}}}
    if pool == "tok":
        p["cls"] = r(1, 1, width)
    return p


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _vit_cfg(pool, **kw):
    cfg = models.default_config("vit")
    cfg.update({**dict(width=32, depth=2, heads=4, mlp_ratio=4, patch=8, pool=pool), **kw})
    return cfg


def _logits(model, variables, image):
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, image))


@pytest.mark.parametrize("pool", ["gap", "tok"])
def test_big_vision_vit_npz_gives_big_vision_logits(tmp, pool):
    rng = np.random.default_rng(3)
    p = random_big_vision_vit(rng, width=32, depth=2, heads=4, mlp=128, patch=8, tokens=16, classes=6, pool=pool)
    path = tmp / f"vit_{pool}.npz"
    np.savez(path, **_flat(p))
    image = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    expected = big_vision_vit_forward(p, 2 * image - 1, 8, pool)   # big_vision feeds [-1, 1]
    cfg = _vit_cfg(pool, split="block1", input_norm="symmetric")
    model = models.build(cfg, 6)
    variables, report = pretrained.load(like(model), str(path), cfg)
    assert not report["kept"] and not report["unused"]
    logits = _logits(model, variables, image)
    np.testing.assert_allclose(logits, expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())


def test_big_vision_old_layouts_and_other_resolutions(tmp):
    rng = np.random.default_rng(4)
    p = random_big_vision_vit(rng, width=32, depth=1, heads=4, mlp=128, patch=8, tokens=16, classes=6, pool="tok")
    image = rng.uniform(size=(2, 32, 32, 3)).astype(np.float32)
    expected = big_vision_vit_forward(p, 2 * image - 1, 8, "tok")
    # The pre-2022 layout: posemb inside Transformer, with the class token's embedding as its first row.
    old = _flat(p)
    cls_pos = rng.normal(size=(1, 1, 32)).astype(np.float32)
    old["Transformer/posembed_input/pos_embedding"] = np.concatenate([cls_pos, old.pop("pos_embedding")], 1)
    old["cls"] = old["cls"] - cls_pos
    np.savez(tmp / "old.npz", **old)
    cfg = _vit_cfg("tok", depth=1, input_norm="symmetric")
    model = models.build(cfg, 6)
    variables, _ = pretrained.load(like(model), str(tmp / "old.npz"), cfg)
    np.testing.assert_allclose(_logits(model, variables, image), expected, rtol=2e-4, atol=2e-4 * np.abs(expected).max())
    # At 48 px the 4x4 position grid is resampled to 6x6; the report says so.
    big = like(model, image_size=48)
    variables, report = pretrained.load(big, str(tmp / "old.npz"), cfg)
    assert report["resampled"] == ["params/extractor/position"]
    assert variables["params"]["extractor"]["position"].shape == (1, 36, 32)
    # A representation layer has no counterpart: refused in one sentence.
    np.savez(tmp / "prelogits.npz", **old, **{"pre_logits/kernel": np.zeros((32, 32), np.float32)})
    with pytest.raises(pretrained.ConversionError, match="'pre_logits/kernel' has no counterpart"):
        pretrained.load(big, str(tmp / "prelogits.npz"), cfg)


# --- --config.model.init: the run starts from the file's weights ----------------------------------------

def test_config_model_init_starts_from_the_weights_and_fits_only_a_new_classifier(tmp, capsys):
    from flax import serialization

    from configs import pretrain
    from modular import params as P, supervised
    config = pretrain.get_config("smoke")
    config.model.update(name="resnet", depth=8, width=4)
    config.data.max_train = 256
    config.num_steps = 3
    # "Published" weights: a 7-class model of the same architecture, as a .msgpack of its variables.
    source_model = models.build(config.model, 7)
    shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
    rng = np.random.default_rng(5)
    shapes = jax.eval_shape(lambda: models.init(source_model, jax.random.key(5), shape))
    source = jax.tree.map(lambda s: rng.uniform(0.5, 1.0, s.shape).astype(s.dtype), shapes)
    path = tmp / "seven.msgpack"
    path.write_bytes(serialization.msgpack_serialize(source))
    config.model.init = str(path)
    clf, ds = supervised.pretrained_backbone(config, "")   # no workdir: no checkpoints or event files
    printed = capsys.readouterr().out
    assert f"init from {path}: loaded" in printed and "re-initialised (another class count)" in printed
    got, want = P.flatten(clf.variables), P.flatten(source)
    frozen = [p for p in want if "classifier" not in p]
    assert frozen and all(np.array_equal(got[p], want[p]) for p in frozen)   # BN statistics included
    assert got["params/head/classifier/kernel"].shape[-1] == ds.num_classes == 10
    assert clf.fit is not None and int(clf.fit.state.step) == 3


def test_library_weights_load_from_orbax_folders_and_npz_across_splits(tmp):
    import orbax.checkpoint as ocp

    from modular import params as P
    cfg = models.default_config("resnet")
    cfg.update(depth=8, width=4, split="stage3")
    rng = np.random.default_rng(6)
    saved = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), like(models.build(cfg, 5), 16))
    with ocp.CheckpointManager(str(tmp / "run" / "checkpoints")) as mngr:
        mngr.save(3, args=ocp.args.StandardSave({"params": saved["params"], "model_state": {
            "batch_stats": saved["batch_stats"]}}))
        mngr.wait_until_finished()
    np.savez(tmp / "library.npz", **P.flatten(saved))
    cfg.split = "stage1"   # the same network split elsewhere: stage2 and stage3 now live in the head
    model = models.build(cfg, 5)
    for path in (tmp / "run", tmp / "library.npz"):
        variables, report = pretrained.load(like(model, 16), str(path), cfg)
        assert not report["kept"] and not report["unused"] and not report["notes"]
        np.testing.assert_array_equal(variables["params"]["head"]["stage3"]["block0"]["conv1"]["kernel"],
                                      saved["params"]["extractor"]["stage3"]["block0"]["conv1"]["kernel"])
        np.testing.assert_array_equal(variables["batch_stats"]["head"]["stage2"]["block0"]["bn1"]["var"],
                                      saved["batch_stats"]["extractor"]["stage2"]["block0"]["bn1"]["var"])
