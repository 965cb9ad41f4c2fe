"""The model zoo: sizes against published figures, PyTorch state-dict compatibility, reproducibility.

Parameter and MAC counts are recomputed here from the graph itself (parameter arrays per
layer, ``ConvProblem.macs`` per Conv node, in x out per Gemm) and compared with figures
published independently of this code: the course's AlexNet/LeNet tables, the ResNet and
DenseNet papers, and torchvision's parameter totals and GFLOPS. PyTorch, when installed, is
the reference for the numerics: the same architectures are written here as small torch
modules laid out like torchvision's, our weights are loaded into them by name, and both
forward passes must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from convengine.core.engine import Engine
from convengine.core.problem import ConvProblem
from convengine.graph import Graph
from convengine.models import MODELS, alexnet, densenet121, get_model, lenet, resnet18, resnet50

ALL_MODELS = ["lenet", "alexnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121"]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")  # torch state, not parameters

# Exact backends only, chosen explicitly: the numerical comparisons below must neither pass
# through a lossy backend (FFT, Winograd) nor through the torch backend plugin.
EXACT_ENGINE = Engine(("im2col", "naive"))


# -- counting, independently of the library's own summaries ---------------------------------------


def param_count(graph: Graph, prefix: str = "") -> int:
    """Parameters as torch counts them (BN running statistics are buffers), under ``prefix``."""
    return sum(int(v.size) for k, v in graph.params.items()
               if not k.endswith(BUFFERS) and (not prefix or k.startswith(prefix + ".")))


def node_macs(graph: Graph, node) -> int:
    if node.op == "Conv":
        top, left, bottom, right = node.attrs["pads"]  # ONNX order
        return ConvProblem.from_shapes(graph.shapes[node.inputs[0]], graph.shapes[node.inputs[1]],
                                       stride=tuple(node.attrs["strides"]), padding=(top, bottom, left, right),
                                       dilation=tuple(node.attrs["dilations"]), groups=node.attrs["group"]).macs
    if node.op == "Gemm":
        out_features, in_features = graph.shapes[node.inputs[1]]
        return in_features * out_features
    return 0


def macs(graph: Graph, *names: str) -> int:
    """MACs of the named nodes (all Conv and Gemm nodes when none are named), batch 1."""
    return sum(node_macs(graph, n) for n in graph.nodes if not names or n.name in names)


_built: dict[str, Graph] = {}


def built(name: str, **kwargs) -> Graph:
    """A model built once per test session (read-only use only)."""
    key = name + repr(sorted(kwargs.items()))
    if key not in _built:
        _built[key] = MODELS[name](**kwargs)
    return _built[key]


# -- the registry ---------------------------------------------------------------------------------


def test_registry_lists_every_model():
    assert sorted(MODELS) == sorted(ALL_MODELS)
    assert MODELS["resnet50"] is resnet50 and MODELS["densenet121"] is densenet121 and MODELS["lenet"] is lenet


def test_get_model_passes_keywords():
    graph = get_model("lenet", num_classes=5, seed=3)
    assert graph.shapes[graph.outputs[0]] == (1, 5)
    assert np.array_equal(graph.params["conv1.weight"], lenet(num_classes=5, seed=3).params["conv1.weight"])


def test_get_model_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="vgg16") as info:
        get_model("vgg16")
    for name in ALL_MODELS:
        assert name in str(info.value)


# -- sizes against published figures --------------------------------------------------------------


def test_lenet_size_matches_course():
    graph = built("lenet")
    assert {p: param_count(graph, p) for p in ("conv1", "conv2", "fc1", "fc2", "fc3")} == {
        "conv1": 156, "conv2": 2_416, "fc1": 48_120, "fc2": 10_164, "fc3": 850}
    assert param_count(graph) == 61_706  # "about 0.06 million parameters"
    assert round(param_count(graph) / 1e6, 2) == 0.06


# The course's AlexNet table truncates each figure to its last printed digit: (value, unit).
ALEXNET_PARAMS = {
    ("features.3",): (614, 1e3),
    ("features.6", "features.8", "features.10"): (3, 1e6),
    ("classifier.1",): (26, 1e6),
    ("classifier.4",): (16, 1e6),
}
ALEXNET_MACS = {
    ("features.0",): (101, 1e6),
    ("features.3",): (415, 1e6),
    ("features.6", "features.8", "features.10"): (445, 1e6),
}


def test_alexnet_sizes_match_course_table():
    graph = built("alexnet")
    assert param_count(graph, "features.0") == 34_944  # 96 x 3 x 11 x 11 + 96
    for layers, (figure, unit) in ALEXNET_PARAMS.items():
        count = sum(param_count(graph, layer) for layer in layers)
        assert int(count // unit) == figure, (layers, count)
    for layers, (figure, unit) in ALEXNET_MACS.items():
        count = macs(graph, *layers)
        assert int(count // unit) == figure, (layers, count)


def test_alexnet_shapes():
    graph = built("alexnet")
    assert graph.inputs[0].shape == (None, 3, 224, 224)
    assert graph.shapes["features.0"] == (1, 96, 54, 54)
    assert graph.shapes["features.12"] == (1, 256, 5, 5)
    assert graph.shapes["flatten"] == (1, 6400)
    assert graph.params["classifier.1.weight"].shape == (4096, 6400)
    assert graph.shapes[graph.outputs[0]] == (1, 1000)


# torchvision's published parameter totals (BN running statistics excluded, as in torch).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808, "densenet121": 7_978_856,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_totals_match_torchvision(name):
    assert param_count(built(name)) == TORCHVISION_PARAMS[name]


# He et al. 2015, Table 1 ("FLOPs", i.e. multiply-adds) for 224x224, and torchvision's GFLOPS
# (also multiply-adds) for its v1.5 models. The paper's bottlenecks (our default) stride on the
# first 1x1 convolution; v1.5 (torchvision, stride_in_1x1=False) strides on the 3x3, so the
# first block of stages 2-4 runs its 1x1 reduction at 4x the resolution: ~0.23 GMACs more.
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}
TORCHVISION_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "resnet101": 7.80, "resnet152": 11.51,
                     "densenet121": 2.83}
RESNET_DEPTH = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


@pytest.mark.parametrize("name", sorted(PAPER_GMACS))
def test_resnet_macs_match_paper(name):
    assert macs(built(name)) / 1e9 == pytest.approx(PAPER_GMACS[name], rel=0.05)


@pytest.mark.parametrize("name", sorted(TORCHVISION_GMACS))
def test_macs_match_torchvision(name):
    v15 = {"stride_in_1x1": False} if name in ("resnet50", "resnet101", "resnet152") else {}
    assert macs(built(name, **v15)) / 1e9 == pytest.approx(TORCHVISION_GMACS[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(RESNET_DEPTH))
def test_resnet_depth_and_structure(name):
    graph = built(name)
    weighted = [n for n in graph.nodes if n.op in ("Conv", "Gemm") and "downsample" not in n.name]
    assert len(weighted) == RESNET_DEPTH[name]  # the N in ResNet-N: conv and fc layers on the main path
    assert all(n.op != "Conv" or len(n.inputs) == 2 for n in graph.nodes)  # no conv has a bias
    shortcuts = sorted(n.name for n in graph.nodes if n.name.endswith("downsample.0"))
    expected = ["layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    if name not in ("resnet18", "resnet34"):
        expected.insert(0, "layer1.0.downsample.0")  # 64 -> 256 channels
    assert shortcuts == expected
    assert graph.shapes["maxpool"] == (1, 64, 56, 56)
    assert graph.shapes["avgpool"] == (1, graph.params["fc.weight"].shape[1], 1, 1)


def test_densenet121_size_and_structure():
    graph = built("densenet121")
    assert macs(graph) / 1e9 == pytest.approx(2.9, rel=0.05)
    assert round(param_count(graph) / 1e6, 1) == 8.0
    convs = [n for n in graph.nodes if n.op == "Conv"]
    assert len(convs) + 1 == 121  # conv0, 2 per dense layer x 58, 3 transitions, and the classifier
    assert graph.shapes["features.denseblock1.denselayer6.concat"] == (1, 256, 56, 56)
    assert graph.shapes["features.transition1.pool"] == (1, 128, 28, 28)
    assert graph.shapes["features.transition3.pool"] == (1, 512, 7, 7)
    assert graph.shapes["features.norm5"] == (1, 1024, 7, 7)
    assert graph.params["classifier.weight"].shape == (1000, 1024)


# -- construction options ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_num_classes_and_in_channels_are_honoured(name):
    graph = MODELS[name](num_classes=7, in_channels=2)
    (spec,) = graph.inputs
    assert spec.shape[:2] == (None, 2)
    first_conv = next(n for n in graph.nodes if n.op == "Conv")
    assert graph.shapes[first_conv.inputs[1]][1] == 2
    assert graph.shapes[graph.outputs[0]] == (1, 7)
    last = next(n for n in reversed(graph.nodes) if n.op == "Gemm")
    assert graph.params[last.inputs[2]].shape == (7,)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet18", "densenet121"])
def test_seed_reproducibility(name):
    factory = MODELS[name]
    a, b, c = factory(seed=1), factory(seed=1), factory(seed=2)
    assert a.params.keys() == b.params.keys() == c.params.keys()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    weights = [k for k in a.params if k.endswith("weight") and a.params[k].ndim > 1]
    assert weights and not any(np.array_equal(a.params[k], c.params[k]) for k in weights)


def test_dtype_is_honoured():
    graph = lenet(dtype="float64")
    assert graph.inputs[0].dtype == "float64"
    assert {v.dtype for v in graph.params.values()} == {np.dtype("float64")}
    y = graph.run(np.random.default_rng(0).standard_normal((2, 1, 28, 28)))
    assert y.dtype == np.float64 and y.shape == (2, 10)


# -- running --------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory, classes", [(lenet, 10), (alexnet, 1000)])
def test_run_output_shape(factory, classes):
    graph = factory()
    x = np.random.default_rng(0).standard_normal((2,) + graph.inputs[0].shape[1:]).astype(np.float32)
    y = graph.run(x)
    assert y.shape == (2, classes) and y.dtype == np.float32 and np.isfinite(y).all()


def test_lenet_activation_is_selectable():
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    ops = {}
    outputs = {}
    for activation, op in [("sigmoid", "Sigmoid"), ("relu", "Relu"), ("tanh", "Tanh")]:
        graph = lenet(activation=activation)
        ops[activation] = {n.op for n in graph.nodes} & {"Sigmoid", "Relu", "Tanh"}
        assert ops[activation] == {op}
        assert sum(n.op == op for n in graph.nodes) == 4  # after conv1, conv2, fc1, fc2
        outputs[activation] = graph.run(x)
    assert not np.allclose(outputs["sigmoid"], outputs["relu"])
    with pytest.raises(ValueError, match="activation"):
        lenet(activation="swish")


# -- PyTorch state-dict compatibility --------------------------------------------------------------


def _torch_modules():
    """Torch versions of the zoo, laid out (and so named) like the course's and torchvision's classes."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    F = torch.nn.functional

    class LeNet(nn.Module):
        def __init__(self, activation="sigmoid", num_classes=10):
            super().__init__()
            self.act = {"sigmoid": torch.sigmoid, "relu": torch.relu}[activation]
            self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.avg_pool2d(self.act(self.conv1(x)), 2, 2)
            x = torch.flatten(F.avg_pool2d(self.act(self.conv2(x)), 2, 2), 1)
            return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    class AlexNet(nn.Module):  # the course's architecture in torchvision's Sequential layout
        def __init__(self, num_classes=1000):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 96, 11, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(96, 256, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(6400, 4096), nn.ReLU(),
                nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    def conv_bn(c_in, c_out, k, stride=1, padding=0):
        return nn.Conv2d(c_in, c_out, k, stride, padding, bias=False), nn.BatchNorm2d(c_out)

    def downsample(c_in, c_out, stride):
        if stride == 1 and c_in == c_out:
            return None
        return nn.Sequential(*conv_bn(c_in, c_out, 1, stride))

    class BasicBlock(nn.Module):
        expansion = 1

        def __init__(self, c_in, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(c_in, planes, 3, stride, 1)
            self.conv2, self.bn2 = conv_bn(planes, planes, 3, 1, 1)
            self.relu = nn.ReLU()
            self.downsample = downsample(c_in, planes, stride)

        def forward(self, x):
            out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, c_in, planes, stride):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(c_in, planes, 1)
            self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride, 1)  # v1.5: stride on the 3x3
            self.conv3, self.bn3 = conv_bn(planes, 4 * planes, 1)
            self.relu = nn.ReLU()
            self.downsample = downsample(c_in, 4 * planes, stride)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(3, 64, 7, 2, 3)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c_in = 64
            for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
                modules = []
                for i in range(blocks):
                    modules.append(block(c_in, planes, 2 if stage > 1 and i == 0 else 1))
                    c_in = planes * block.expansion
                setattr(self, f"layer{stage}", nn.Sequential(*modules))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c_in, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    class DenseLayer(nn.Module):
        def __init__(self, c_in, growth, bn_size):
            super().__init__()
            self.norm1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
            self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
            self.norm2, self.relu2 = nn.BatchNorm2d(bn_size * growth), nn.ReLU()
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

        def forward(self, x):
            new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
            return torch.cat([x, new], 1)

    class DenseNet(nn.Module):
        def __init__(self, growth=32, blocks=(6, 12, 24, 16), init=64, bn_size=4, num_classes=1000):
            super().__init__()
            self.features = nn.Sequential()
            self.features.add_module("conv0", nn.Conv2d(3, init, 7, 2, 3, bias=False))
            self.features.add_module("norm0", nn.BatchNorm2d(init))
            self.features.add_module("relu0", nn.ReLU())
            self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
            c = init
            for i, layers in enumerate(blocks, start=1):
                block = nn.Sequential()
                for j in range(1, layers + 1):
                    block.add_module(f"denselayer{j}", DenseLayer(c, growth, bn_size))
                    c += growth
                self.features.add_module(f"denseblock{i}", block)
                if i != len(blocks):
                    transition = nn.Sequential()
                    transition.add_module("norm", nn.BatchNorm2d(c))
                    transition.add_module("relu", nn.ReLU())
                    transition.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                    transition.add_module("pool", nn.AvgPool2d(2, 2))
                    self.features.add_module(f"transition{i}", transition)
                    c //= 2
            self.features.add_module("norm5", nn.BatchNorm2d(c))
            self.classifier = nn.Linear(c, num_classes)

        def forward(self, x):
            x = F.adaptive_avg_pool2d(F.relu(self.features(x)), 1)
            return self.classifier(torch.flatten(x, 1))

    return torch, {
        "lenet": lambda: LeNet("sigmoid"),
        "lenet_relu": lambda: LeNet("relu"),
        "alexnet": AlexNet,
        "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
        "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
        "densenet121": DenseNet,
    }


def _randomize(graph: Graph, seed: int = 0) -> None:
    """Give every bias and batch norm non-trivial values, so that names and folding are tested."""
    rng = np.random.default_rng(seed)
    for name, value in graph.params.items():
        if name.endswith("running_var"):
            new = rng.uniform(0.5, 1.5, value.shape)
        elif name.endswith(("running_mean", "bias")):
            new = 0.1 * rng.standard_normal(value.shape)
        elif value.ndim == 1:  # batch-norm scale
            new = rng.uniform(0.5, 1.5, value.shape)
        else:
            continue
        graph.params[name] = new.astype(value.dtype)


def _torch_twin(graph: Graph, key: str):
    """The torch module for ``key``, with our weights loaded by name (keys and shapes checked)."""
    torch, modules = _torch_modules()
    module = modules[key]().eval()
    theirs = {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    ours = {k: v.shape for k, v in graph.params.items()}
    assert sorted(ours) == sorted(theirs), (sorted(set(ours) ^ set(theirs)))[:10]
    assert ours == theirs
    result = module.load_state_dict({k: torch.from_numpy(v) for k, v in graph.params.items()}, strict=False)
    assert not result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    return torch, module


def _compare(graph: Graph, key: str, batch: int, *, fold_batchnorm: bool = True):
    torch, module = _torch_twin(graph, key)
    x = np.random.default_rng(1).standard_normal((batch,) + graph.inputs[0].shape[1:]).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = graph.compile(EXACT_ENGINE, fold_batchnorm=fold_batchnorm).run(x)
    assert got.shape == expected.shape and got.dtype == np.float32
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("key, factory, batch", [
    ("lenet", lambda: lenet(), 2),
    ("lenet_relu", lambda: lenet(activation="relu"), 2),
    ("alexnet", alexnet, 2),
    ("resnet18", resnet18, 1),
    ("resnet50", lambda: resnet50(stride_in_1x1=False), 1),  # the torch twin is torchvision's v1.5
    ("densenet121", densenet121, 1),
])
def test_matches_torch(key, factory, batch):
    graph = factory()
    _randomize(graph)
    _compare(graph, key, batch)


def test_resnet18_matches_torch_without_batchnorm_folding():
    graph = resnet18(seed=5)
    _randomize(graph, seed=5)
    _compare(graph, "resnet18", 1, fold_batchnorm=False)


def test_state_dict_round_trip_from_torch():
    """Weights initialised by torch load into our graph by name and give torch's outputs."""
    torch, modules = _torch_modules()
    torch.manual_seed(0)
    module = modules["resnet18"]().eval()
    graph = resnet18(seed=9)
    for k, v in module.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert graph.params[k].shape == tuple(v.shape)
            graph.params[k] = v.detach().numpy().copy()
    _compare(graph, "resnet18", 1)


def test_bottleneck_stride_placement():
    """Paper (default): the first 1x1 of a strided bottleneck strides; torchvision v1.5: the 3x3 does."""
    paper, v15 = built("resnet50"), built("resnet50", stride_in_1x1=False)
    assert paper.shapes["layer2.0.conv1"][2:] == (28, 28) and paper.shapes["layer2.0.conv2"][2:] == (28, 28)
    assert v15.shapes["layer2.0.conv1"][2:] == (56, 56) and v15.shapes["layer2.0.conv2"][2:] == (28, 28)
    assert param_count(paper) == param_count(v15)


@pytest.mark.parametrize("key, factory", [
    ("alexnet", alexnet),
    ("resnet50", lambda: resnet50(stride_in_1x1=False)),
    ("densenet121", densenet121),
])
def test_full_size_onnx_export_runs_like_onnxruntime(key, factory, tmp_path):
    """Full-size architectures exported by torch to ONNX: load_onnx(file).run(x) == ONNX Runtime on the file."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from convengine import load_onnx

    graph = factory()
    _randomize(graph)
    torch, module = _torch_twin(graph, key)
    path = str(tmp_path / f"{key}.onnx")
    torch.onnx.export(module, torch.zeros(1, 3, 224, 224), path, input_names=["image"], output_names=["logits"],
                      opset_version=17, dynamo=False, dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    x = np.random.default_rng(2).standard_normal((2, 3, 224, 224)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    expected = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    got = load_onnx(path).compile(EXACT_ENGINE).run(x)
    assert got.shape == expected.shape == (2, 1000)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
