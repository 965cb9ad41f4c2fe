"""How much of the machine's GEMM rate ``direct``'s register tiles reach, layer by layer, beside ONNX Runtime and torch.

For each layer (ResNet-50's distinct convolutions at batch 1 and its 3x3 layers at batch 8
unless ``--layer``/``--set``/``--batch`` say otherwise), in interleaved rounds in this one
process (:func:`convengine.bench.interleaved`, medians): the ``direct`` backend as it is
now (its own ``prepare``, no engine in between), optionally ``direct`` as of a git revision
(``--baseline REV``: an A/B of a kernel change in one run), a numpy float32 GEMM of
1024 x 1024 x 1024 (the machine's rate at that minute, in the same rounds), ONNX
Runtime's ``Conv`` on a one-node model and ``torch.nn.functional.conv2d``, all on 2
threads (``--threads``). Printed per layer: each one's GFLOP/s, ``direct``'s fraction of
the GEMM rate, and the time ratios against ORT and torch (above 1: ``direct`` slower).
Compilation happens in a warm-up call before any timing.

    python benchmarks/direct_efficiency.py
    python benchmarks/direct_efficiency.py --baseline HEAD~1 --rounds 9
    python benchmarks/direct_efficiency.py --set alexnet --layer resnet50.conv1 --batch 1
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine import bench
from convengine.backends.direct import DirectBackend
from convengine.bench.catalogue import SETS, select
from convengine.runtime.threads import set_num_threads

GEMM_SIZE = 1024
DEFAULT_BATCH8 = ("resnet50.layer1.conv2", "resnet50.layer3.conv2", "resnet50.layer4.conv2")
PACKAGE = "convengine/backends/direct"


def backend_at(revision: str) -> DirectBackend:
    """``direct``'s package as of git ``revision``, imported beside the current one (its files copied to a
    temporary folder named after the commit, so that Numba's cache for it survives between runs)."""
    root = Path(__file__).resolve().parent.parent
    sha = subprocess.check_output(["git", "rev-parse", revision], cwd=root, text=True).strip()
    folder = Path(tempfile.gettempdir()) / f"convengine-direct-{sha[:12]}"
    folder.mkdir(exist_ok=True)
    files = subprocess.check_output(["git", "ls-tree", "--name-only", sha, f"{PACKAGE}/"], cwd=root, text=True).split()
    for path in files:
        if path.endswith(".py"):
            text = subprocess.check_output(["git", "show", f"{sha}:{path}"], cwd=root, text=True)
            target = folder / Path(path).name
            if not target.exists() or target.read_text() != text:
                target.write_text(text)
    name = f"convengine.backends._direct_{sha[:12]}"  # inside convengine.backends: its relative imports resolve
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.DirectBackend()


@dataclass(frozen=True)
class Row:
    """One layer at one batch size: median seconds per call of each contender, and the layer's FLOPs."""

    layer: str
    batch: int
    flops: int
    seconds: dict

    def gflops(self, name: str) -> float | None:
        s = self.seconds.get(name)
        return self.flops / s / 1e9 if s else None


def measure(spec, batch: int, backends: dict, rounds: int) -> Row:
    problem = spec.problem(batch)
    x, w, b = bench.problem_data(problem)
    contenders = {}
    for name, backend in backends.items():
        execute = backend.prepare(problem, w, b)
        contenders[name] = lambda execute=execute: execute(x)
    a = np.random.default_rng(0).standard_normal((GEMM_SIZE, GEMM_SIZE), dtype=np.float32)
    contenders["gemm"] = lambda: a @ a
    peers, _ = bench.available_peers(problem, x, w, b)
    contenders.update({name.removeprefix("peer:"): fn for name, fn in peers.items()})
    samples = bench.interleaved(contenders, rounds)
    seconds = {name: float(np.median(s)) for name, s in samples.items()}
    seconds["gemm"] *= problem.flops / (2 * GEMM_SIZE**3)  # as if the GEMM had the layer's FLOPs
    return Row(spec.name, batch, problem.flops, seconds)


def _cell(value, fmt) -> str:
    return format(value, fmt) if value else "-"


def report(rows: list[Row], backends: list[str]) -> None:
    peers = [p for p in ("onnxruntime", "torch") if any(p in r.seconds for r in rows)]
    head = f"{'layer':28s} {'N':>2s} {'GEMM':>6s} " + " ".join(f"{n[:14]:>14s}" for n in backends)
    head += " " + " ".join(f"{p[:5]:>6s}" for p in peers) + "   (GFLOP/s)  " + " ".join(
        f"{n[:10] + '/GEMM':>15s} {n[:10] + '/ORT':>14s} {n[:10] + '/torch':>16s}" for n in backends)
    print(head)
    for r in rows:
        gemm = r.gflops("gemm")
        line = f"{r.layer.removeprefix('resnet50.'):28s} {r.batch:2d} {gemm:6.0f} "
        line += " ".join(f"{_cell(r.gflops(n), '14.0f'):>14s}" for n in backends)
        line += " " + " ".join(f"{_cell(r.gflops(p), '6.0f'):>6s}" for p in peers) + "              "
        for n in backends:
            frac = r.gflops(n) / gemm
            ort = r.seconds[n] / r.seconds["onnxruntime"] if "onnxruntime" in r.seconds else None
            torch = r.seconds[n] / r.seconds["torch"] if "torch" in r.seconds else None
            line += f" {frac:15.0%} {_cell(ort, '14.2f'):>14s} {_cell(torch, '16.2f'):>16s}"
        print(line)
    for n in backends:
        logs = [math.log(r.seconds[n] / r.seconds["onnxruntime"]) for r in rows if "onnxruntime" in r.seconds]
        if logs:
            print(f"{n}: geometric mean of time / ORT over {len(logs)} rows: {math.exp(sum(logs) / len(logs)):.3f}")
    if len(backends) == 2:
        a, b = backends
        logs = [math.log(r.seconds[a] / r.seconds[b]) for r in rows]
        print(f"{a} / {b} time, geometric mean: {math.exp(sum(logs) / len(logs)):.3f} "
              f"(per row: {', '.join(f'{math.exp(v):.2f}' for v in logs)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", action="append", default=[], help="a catalogue layer name (repeatable)")
    parser.add_argument("--set", action="append", default=[], choices=sorted(SETS), help="a catalogue set (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch sizes (default: 1 for all, 8 for three 3x3 layers)")
    parser.add_argument("--baseline", help="also time direct as of this git revision (A/B)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    backends = {"direct": DirectBackend()}
    if args.baseline:
        backends[f"direct@{args.baseline}"] = backend_at(args.baseline)
    specs = select(args.layer, args.set or ([] if args.layer else ["resnet50"]))
    cases = [(s, n) for n in (args.batch or [1]) for s in specs]
    if not args.batch and not args.layer and not args.set:
        cases += [(s, 8) for s in select(DEFAULT_BATCH8)]
    with open("/proc/loadavg") as f:
        print(f"convengine {ce.__version__}, {args.threads} threads, {args.rounds} interleaved rounds (medians); "
              f"load average {f.read().split()[0]} at the start")
    rows = [measure(spec, batch, backends, args.rounds) for spec, batch in cases]
    report(rows, list(backends))
    with open("/proc/loadavg") as f:
        print(f"load average at the end: {' '.join(f.read().split()[:3])}")


if __name__ == "__main__":
    main()
