"""Every torchvision CNN classifier family: export to ONNX, load with convengine, compare with ONNX Runtime.

Two steps, in two Python environments, because torchvision does not import with the CPU-only
torch that convengine's test extra installs (its operator-registration modules need the CUDA
build):

    # 1. in an environment with torch and torchvision (any build that imports), no convengine needed
    python -m venv /tmp/tvenv && /tmp/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx
    /tmp/tvenv/bin/python benchmarks/export_torchvision.py export [--out /tmp/tv_onnx] [--only resnet50,...]

    # 2. in convengine's environment (with onnxruntime)
    python benchmarks/export_torchvision.py check [--out /tmp/tv_onnx] [--batch 1]

``export`` builds each model with random weights (torchvision's own initialisation, seeded),
calibrates its batch-norm statistics (a few forward passes in train mode over random images,
``momentum=None`` so the running statistics are the plain average of those passes, then
``eval()``) and exports it with ``torch.onnx.export`` at opset 17 (the TorchScript exporter,
``dynamo=False``; a free batch dimension) to ``OUT/NAME.onnx``. Random but calibrated weights
keep every activation in a realistic range, so a comparison means something.

``check`` loads each file with ``convengine.load_onnx`` and runs it and ONNX Runtime
(CPUExecutionProvider) on the same seeded random image, and prints one row per family:
whether it loads (else the first problem the importer reports), the normwise error
``max|convengine - ORT| / max|ORT|`` of the logits, and the ONNX operators the file uses.
The target of issue 14 is that every family loads and matches to 1e-4. The rows are also
written to ``OUT/check.json``. No ``.onnx`` file belongs in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

#: (torchvision builder, keyword arguments, input side): one per family the issue names.
FAMILIES = {
    "alexnet": ("alexnet", {}, 224),
    "vgg11_bn": ("vgg11_bn", {}, 224),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}, 224),
    "inception_v3": ("inception_v3", {"aux_logits": False, "init_weights": True}, 299),
    "squeezenet1_1": ("squeezenet1_1", {}, 224),
    "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", {}, 224),
    "mobilenet_v2": ("mobilenet_v2", {}, 224),
    "mobilenet_v3_small": ("mobilenet_v3_small", {}, 224),
    "mobilenet_v3_large": ("mobilenet_v3_large", {}, 224),
    "efficientnet_b0": ("efficientnet_b0", {}, 224),
    "mnasnet1_0": ("mnasnet1_0", {}, 224),
    "regnet_y_400mf": ("regnet_y_400mf", {}, 224),
    "resnet50": ("resnet50", {}, 224),
    "resnext50_32x4d": ("resnext50_32x4d", {}, 224),
    "wide_resnet50_2": ("wide_resnet50_2", {}, 224),
    "densenet121": ("densenet121", {}, 224),
    "convnext_tiny": ("convnext_tiny", {}, 224),
}

DEFAULT_OUT = "/tmp/tv_onnx"
OPSET = 17


def export(out: str, names: list[str], calibration_passes: int = 3, calibration_batch: int = 4) -> None:
    import torch
    import torchvision

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    os.makedirs(out, exist_ok=True)
    for name in names:
        builder, kwargs, side = FAMILIES[name]
        start = time.perf_counter()
        torch.manual_seed(0)
        model = getattr(torchvision.models, builder)(weights=None, **kwargs)
        batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for bn in batchnorms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration passes
        if batchnorms:
            model.train()
            generator = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for _ in range(calibration_passes):
                    model(torch.randn(calibration_batch, 3, side, side, generator=generator))
        model.eval()
        path = os.path.join(out, f"{name}.onnx")
        with torch.no_grad():
            torch.onnx.export(model, (torch.randn(1, 3, side, side),), path, opset_version=OPSET, dynamo=False,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
        print(f"{name}: {path} ({os.path.getsize(path) / 1e6:.1f} MB, {len(batchnorms)} batch norms calibrated, "
              f"{time.perf_counter() - start:.0f} s)", flush=True)


def check(out: str, names: list[str], batch: int) -> list[dict]:
    import numpy as np
    import onnx
    import onnxruntime as ort

    import convengine as ce

    rows = []
    for name in names:
        path = os.path.join(out, f"{name}.onnx")
        if not os.path.exists(path):
            rows.append(dict(family=name, loads=None, error=None, problem="not exported"))
            continue
        proto = onnx.load(path)
        ops = sorted({n.op_type for n in proto.graph.node})
        side = FAMILIES[name][2]
        x = np.random.default_rng(0).standard_normal((batch, 3, side, side)).astype(np.float32)
        row = dict(family=name, ops=ops)
        try:
            graph = ce.load_onnx(path)
        except ce.GraphError as exc:
            lines = [line.strip() for line in str(exc).splitlines()]
            row.update(loads=False, error=None, problem=lines[1] if len(lines) > 1 else lines[0])
            rows.append(row)
            print(f"{name}: does not load: {row['problem']}", flush=True)
            continue
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        want = session.run(None, {session.get_inputs()[0].name: x})[0].astype(np.float64)
        got = np.asarray(graph.run(x), np.float64)
        error = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
        row.update(loads=True, error=error, problem=None, matches=error <= 1e-4)
        rows.append(row)
        print(f"{name}: loads, normwise error {error:.2e}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| family | loads | max normwise error vs ORT | <= 1e-4 |", "| --- | --- | --- | --- |"]
    for r in rows:
        loads = {True: "yes", False: f"no: {r.get('problem')}", None: r.get("problem")}[r["loads"]]
        error = f"{r['error']:.1e}" if r.get("error") is not None else "-"
        ok = "-" if r.get("error") is None else ("yes" if r["error"] <= 1e-4 else "NO")
        lines.append(f"| {r['family']} | {loads} | {error} | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("export", "check"))
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder of the .onnx files (default {DEFAULT_OUT})")
    parser.add_argument("--only", default="", help="comma-separated families (default: all)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the check (default 1)")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(FAMILIES)
    unknown = sorted(set(names) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    if args.step == "export":
        export(args.out, names)
        return 0
    rows = check(args.out, names, args.batch)
    with open(os.path.join(args.out, "check.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(table(rows))
    return 0 if all(r.get("error") is not None and r["error"] <= 1e-4 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
