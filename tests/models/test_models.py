"""The model zoo: sizes against published figures, PyTorch state-dict compatibility, reproducibility.

Parameter and MAC counts are recomputed here from the graph itself (parameter arrays per
layer, ``ConvProblem.macs`` per Conv node, in x out per Gemm) and compared with figures
published independently of this code: the course's AlexNet/LeNet tables, the ResNet and
DenseNet papers, and torchvision's parameter totals and GFLOPS (the ResNeXt, Wide ResNet,
SqueezeNet, ShuffleNet V2 and MobileNetV2 figures too). PyTorch, when installed, is
the reference for the numerics: the same architectures are written here as small torch
modules laid out like torchvision's, our weights are loaded into them by name, and both
forward passes must agree.
"""

from __future__ import annotations

import numpy as np
import pytest

from convengine.cli import main
from convengine.core.engine import Engine
from convengine.core.problem import ConvProblem
from convengine.graph import Graph
from convengine.models import (
    MODELS,
    alexnet,
    densenet121,
    get_model,
    lenet,
    mobilenet_v2,
    resnet18,
    resnet50,
    resnext50_32x4d,
    shufflenet_v2_x1_0,
    squeezenet1_1,
    wide_resnet50_2,
)

ALL_MODELS = ["lenet", "alexnet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
              "resnext50_32x4d", "wide_resnet50_2", "squeezenet1_1", "shufflenet_v2_x1_0", "mobilenet_v2"]
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
    "resnet152": 60_192_808, "densenet121": 7_978_856, "resnext50_32x4d": 25_028_904, "wide_resnet50_2": 68_883_240,
    "squeezenet1_1": 1_235_496, "shufflenet_v2_x1_0": 2_278_604, "mobilenet_v2": 3_504_872,
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


# torchvision's GFLOPS (multiply-adds at 224x224, its weights' "_ops" metadata), as printed: (value, decimals).
TORCHVISION_OPS = {"resnext50_32x4d": (4.23, 2), "wide_resnet50_2": (11.398, 3), "squeezenet1_1": (0.349, 3),
                   "shufflenet_v2_x1_0": (0.145, 3), "mobilenet_v2": (0.301, 3)}


@pytest.mark.parametrize("name", sorted(TORCHVISION_OPS))
def test_macs_match_torchvision_to_its_printed_digits(name):
    value, decimals = TORCHVISION_OPS[name]
    assert round(macs(built(name)) / 1e9, decimals) == value


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


# -- torchvision's state_dict names, written out from its module structure ----------------------------


def _bn(prefix: str, c: int) -> dict:
    return {f"{prefix}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")}


# One block (or more) per model: every parameter under the prefix, with its shape, as
# torchvision's modules name them (Sequential indices included).
TORCHVISION_KEYS = {
    "resnext50_32x4d": ("layer1.0", {  # width 128 = 64 x 4/64 x 32; conv2 in 32 groups of 4 channels
        "layer1.0.conv1.weight": (128, 64, 1, 1), **_bn("layer1.0.bn1", 128),
        "layer1.0.conv2.weight": (128, 4, 3, 3), **_bn("layer1.0.bn2", 128),
        "layer1.0.conv3.weight": (256, 128, 1, 1), **_bn("layer1.0.bn3", 256),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), **_bn("layer1.0.downsample.1", 256)}),
    "wide_resnet50_2": ("layer4.2", {  # width 1024 = 512 x 128/64
        "layer4.2.conv1.weight": (1024, 2048, 1, 1), **_bn("layer4.2.bn1", 1024),
        "layer4.2.conv2.weight": (1024, 1024, 3, 3), **_bn("layer4.2.bn2", 1024),
        "layer4.2.conv3.weight": (2048, 1024, 1, 1), **_bn("layer4.2.bn3", 2048)}),
    "squeezenet1_1": ("features.3", {
        "features.3.squeeze.weight": (16, 64, 1, 1), "features.3.squeeze.bias": (16,),
        "features.3.expand1x1.weight": (64, 16, 1, 1), "features.3.expand1x1.bias": (64,),
        "features.3.expand3x3.weight": (64, 16, 3, 3), "features.3.expand3x3.bias": (64,)}),
    "shufflenet_v2_x1_0": ("stage2", {
        "stage2.0.branch1.0.weight": (24, 1, 3, 3), **_bn("stage2.0.branch1.1", 24),
        "stage2.0.branch1.2.weight": (58, 24, 1, 1), **_bn("stage2.0.branch1.3", 58),
        "stage2.0.branch2.0.weight": (58, 24, 1, 1), **_bn("stage2.0.branch2.1", 58),
        "stage2.0.branch2.3.weight": (58, 1, 3, 3), **_bn("stage2.0.branch2.4", 58),
        "stage2.0.branch2.5.weight": (58, 58, 1, 1), **_bn("stage2.0.branch2.6", 58),
        **{k: v for i in (1, 2, 3) for k, v in {  # stride-1 units: no branch1, branch2 on half the channels
            f"stage2.{i}.branch2.0.weight": (58, 58, 1, 1), **_bn(f"stage2.{i}.branch2.1", 58),
            f"stage2.{i}.branch2.3.weight": (58, 1, 3, 3), **_bn(f"stage2.{i}.branch2.4", 58),
            f"stage2.{i}.branch2.5.weight": (58, 58, 1, 1), **_bn(f"stage2.{i}.branch2.6", 58)}.items()}}),
    "mobilenet_v2": ("features", {
        "features.0.0.weight": (32, 3, 3, 3), **_bn("features.0.1", 32),
        # t = 1: no expansion, conv = [depthwise Conv2dNormActivation, projection, BN]
        "features.1.conv.0.0.weight": (32, 1, 3, 3), **_bn("features.1.conv.0.1", 32),
        "features.1.conv.1.weight": (16, 32, 1, 1), **_bn("features.1.conv.2", 16),
        # t = 6: conv = [expansion, depthwise, projection, BN]
        **{k: v for i, (c_in, c_out) in ((2, (16, 24)), (3, (24, 24))) for k, v in {
            f"features.{i}.conv.0.0.weight": (6 * c_in, c_in, 1, 1), **_bn(f"features.{i}.conv.0.1", 6 * c_in),
            f"features.{i}.conv.1.0.weight": (6 * c_in, 1, 3, 3), **_bn(f"features.{i}.conv.1.1", 6 * c_in),
            f"features.{i}.conv.2.weight": (c_out, 6 * c_in, 1, 1), **_bn(f"features.{i}.conv.3", c_out)}.items()},
        "features.17.conv.0.0.weight": (960, 160, 1, 1), **_bn("features.17.conv.0.1", 960),
        "features.17.conv.1.0.weight": (960, 1, 3, 3), **_bn("features.17.conv.1.1", 960),
        "features.17.conv.2.weight": (320, 960, 1, 1), **_bn("features.17.conv.3", 320),
        "features.18.0.weight": (1280, 320, 1, 1), **_bn("features.18.1", 1280)}),
}
# (mobilenet_v2's blocks 4-16 are left to the twin's full state_dict comparison in test_matches_torch.)


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_names_and_shapes_follow_torchvision(name):
    prefix, expected = TORCHVISION_KEYS[name]
    graph = built(name)
    if name == "mobilenet_v2":
        ours = {k: v.shape for k, v in graph.params.items()
                if k.startswith("features.") and k.split(".")[1] in ("0", "1", "2", "3", "17", "18")}
    else:
        ours = {k: v.shape for k, v in graph.params.items() if k.startswith(prefix + ".")}
    assert sorted(ours) == sorted(expected)
    assert ours == expected


# -- construction options ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_num_classes_and_in_channels_are_honoured(name):
    graph = MODELS[name](num_classes=7, in_channels=2)
    (spec,) = graph.inputs
    assert spec.shape[:2] == (None, 2)
    first_conv = next(n for n in graph.nodes if n.op == "Conv")
    assert graph.shapes[first_conv.inputs[1]][1] == 2
    assert graph.shapes[graph.outputs[0]] == (1, 7)
    last = next(n for n in reversed(graph.nodes) if n.op in ("Gemm", "Conv"))  # SqueezeNet classifies with a 1x1 conv
    assert graph.params[last.inputs[2]].shape == (7,)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet18", "densenet121", "shufflenet_v2_x1_0"])
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


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TORCHVISION_OPS))
def test_summary_cli_table_totals_torchvision_parameters(name, capsys):
    assert main(["summary", name]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model: {name}\n")
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert total.split()[1:] == [f"{TORCHVISION_PARAMS[name]:,}", f"{macs(built(name)):,}"]


@pytest.mark.parametrize("name, batch", [("squeezenet1_1", 1), ("shufflenet_v2_x1_0", 2)])
def test_run_cli_runs_the_small_new_models_end_to_end(name, batch, capsys):
    assert main(["run", name, "--batch", str(batch), "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert f"model {name}, batch {batch}" in out and "whole model: median" in out
    assert f"shape ({batch}, 1000), dtype float32, finite True" in out


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

        def __init__(self, c_in, planes, stride, groups=1, width_per_group=64):
            super().__init__()
            width = int(planes * (width_per_group / 64.0)) * groups  # torchvision's formula
            self.conv1, self.bn1 = conv_bn(c_in, width, 1)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)  # v1.5: stride on the 3x3
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3, self.bn3 = conv_bn(width, 4 * planes, 1)
            self.relu = nn.ReLU()
            self.downsample = downsample(c_in, 4 * planes, stride)

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet(nn.Module):
        def __init__(self, block, layers, num_classes=1000, **block_args):
            super().__init__()
            self.conv1, self.bn1 = conv_bn(3, 64, 7, 2, 3)
            self.relu = nn.ReLU()
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c_in = 64
            for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
                modules = []
                for i in range(blocks):
                    modules.append(block(c_in, planes, 2 if stage > 1 and i == 0 else 1, **block_args))
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

    class Fire(nn.Module):
        def __init__(self, c_in, squeeze, expand1x1, expand3x3):
            super().__init__()
            self.squeeze, self.squeeze_activation = nn.Conv2d(c_in, squeeze, 1), nn.ReLU()
            self.expand1x1, self.expand1x1_activation = nn.Conv2d(squeeze, expand1x1, 1), nn.ReLU()
            self.expand3x3, self.expand3x3_activation = nn.Conv2d(squeeze, expand3x3, 3, padding=1), nn.ReLU()

        def forward(self, x):
            x = self.squeeze_activation(self.squeeze(x))
            return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                              self.expand3x3_activation(self.expand3x3(x))], 1)

    class SqueezeNet11(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()

            def pool():
                return nn.MaxPool2d(3, 2, ceil_mode=True)

            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), pool(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1), nn.ReLU(),
                                            nn.AdaptiveAvgPool2d(1))

        def forward(self, x):
            return torch.flatten(self.classifier(self.features(x)), 1)

    def channel_shuffle(x, groups):
        n, c, h, w = x.shape
        return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)

    class ShuffleUnit(nn.Module):  # torchvision's shufflenetv2.InvertedResidual
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.stride, half = stride, c_out // 2

            def depthwise(c, s):
                return nn.Conv2d(c, c, 3, s, 1, groups=c, bias=False)

            if stride > 1:
                self.branch1 = nn.Sequential(depthwise(c_in, stride), nn.BatchNorm2d(c_in),
                                             nn.Conv2d(c_in, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
            else:
                self.branch1 = nn.Sequential()
            self.branch2 = nn.Sequential(
                nn.Conv2d(c_in if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                depthwise(half, stride), nn.BatchNorm2d(half),
                nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2(nn.Module):
        def __init__(self, repeats=(4, 8, 4), channels=(24, 116, 232, 464, 1024), num_classes=1000):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]),
                                       nn.ReLU())
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c_in = channels[0]
            for stage, (units, c_out) in enumerate(zip(repeats, channels[1:]), start=2):
                setattr(self, f"stage{stage}", nn.Sequential(
                    ShuffleUnit(c_in, c_out, 2), *[ShuffleUnit(c_out, c_out, 1) for _ in range(units - 1)]))
                c_in = c_out
            self.conv5 = nn.Sequential(nn.Conv2d(c_in, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]),
                                       nn.ReLU())
            self.fc = nn.Linear(channels[-1], num_classes)

        def forward(self, x):
            x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
            return self.fc(self.conv5(x).mean([2, 3]))

    def conv_bn_relu6(c_in, c_out, k, stride=1, groups=1):  # torchvision's Conv2dNormActivation
        return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                             nn.BatchNorm2d(c_out), nn.ReLU6())

    class InvertedResidual(nn.Module):  # torchvision's mobilenetv2.InvertedResidual
        def __init__(self, c_in, c_out, stride, t):
            super().__init__()
            hidden = int(round(c_in * t))
            self.use_res_connect = stride == 1 and c_in == c_out
            layers = [conv_bn_relu6(c_in, hidden, 1)] if t != 1 else []
            layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                       nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes=1000):
            super().__init__()
            features, c_in = [conv_bn_relu6(3, 32, 3, 2)], 32
            for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                               (6, 160, 3, 2), (6, 320, 1, 1)]:
                for i in range(n):
                    features.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                    c_in = c
            features.append(conv_bn_relu6(c_in, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
            return self.classifier(torch.flatten(x, 1))

    return torch, {
        "lenet": lambda: LeNet("sigmoid"),
        "lenet_relu": lambda: LeNet("relu"),
        "alexnet": AlexNet,
        "resnet18": lambda: ResNet(BasicBlock, (2, 2, 2, 2)),
        "resnet50": lambda: ResNet(Bottleneck, (3, 4, 6, 3)),
        "densenet121": DenseNet,
        "resnext50_32x4d": lambda: ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4),
        "wide_resnet50_2": lambda: ResNet(Bottleneck, (3, 4, 6, 3), width_per_group=128),
        "squeezenet1_1": SqueezeNet11,
        "shufflenet_v2_x1_0": ShuffleNetV2,
        "mobilenet_v2": MobileNetV2,
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
    # the newer entries on small inputs (global pooling makes every size valid), to keep the test fast
    ("resnext50_32x4d", lambda: resnext50_32x4d(input_size=64), 2),
    ("wide_resnet50_2", lambda: wide_resnet50_2(input_size=64), 1),
    ("squeezenet1_1", lambda: squeezenet1_1(input_size=64), 2),
    ("shufflenet_v2_x1_0", lambda: shufflenet_v2_x1_0(input_size=64), 1),  # batch 1: the channel split is contiguous
    ("shufflenet_v2_x1_0", lambda: shufflenet_v2_x1_0(input_size=(96, 64)), 2),  # batch 2: it is not
    ("mobilenet_v2", lambda: mobilenet_v2(input_size=96), 2),
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
