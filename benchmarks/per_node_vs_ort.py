"""Where a model's time goes, node by node: convengine's executor steps beside ONNX Runtime's own profile.

For each ONNX file, ONNX Runtime runs it with its profiler on (``enable_profiling``, the
same thread count) ``--runs`` times; each node's median ``kernel_time`` is its time. Then
convengine's executor times every step of the same model (:func:`convengine.bench.alone.layer_times`,
same input, same thread count, after ORT's session is gone so its threads cannot spin
beside ours). The two sides fuse differently (ORT: Conv+Clip, NCHWc reorders;
convengine: Conv+BatchNormalization+Relu, squeeze-excitation), so both are summed per
*group*: a node convengine runs as a step of its own names its group, a node of one of its
fused blocks (:func:`convengine.graph.fusion.fused_blocks`) joins its block's; any other node
(an absorbed activation, a Flatten) joins the group of the node that produced its first input.
ORT names NCHWc nodes after their output tensor (``..._nchwc``, a batch norm it turned into
a scaling ``..._bn_nchwc``); those map to the tensor's producer. A node ORT fused from several
(``BiasGelu``, ``QuickGelu``) maps through its output, which is the last replaced node's output
(read from ORT's optimised graph). What maps to no ONNX node (ORT's ``ReorderOutput``) is
listed as ``(ORT only)``.

Printed per model: both totals (whole run and the sum of the nodes: the difference is
per-node overhead), then the ``--top`` groups with the largest gap in ms, with ratio,
output shape and convengine's backend. Timings are medians of one process each; the machine's
load average is printed with them.

    python benchmarks/per_node_vs_ort.py /tmp/tv_onnx/mobilenet_v2.onnx
    python benchmarks/per_node_vs_ort.py /tmp/tv_onnx/*.onnx --top 8 --threads 2
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from collections import defaultdict

# isort: off
import convengine as ce  # before numpy: sets OPENBLAS_THREAD_TIMEOUT before BLAS loads (docs/usage.md)
# isort: on
import numpy as np

from convengine.bench.alone import layer_times
from convengine.graph.fusion import fused_blocks
from convengine.graph.ir import consumers
from convengine.graph.onnx import load_onnx
from convengine.runtime.threads import set_num_threads

ORT_ONLY = "(ORT only)"


def ort_node_times(path: str, x: np.ndarray, threads: int,
                   runs: int) -> tuple[dict[str, float], float, dict[str, list[str]]]:
    """ORT's median kernel time per profiled node name (suffixes stripped), its median whole run, and
    the output tensors of each node of its optimised graph."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="ort-profile-") as workdir:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(workdir, "profile")
        options.optimized_model_filepath = os.path.join(workdir, "optimized.onnx")
        options.log_severity_level = 3  # (saving a graph with NCHWc nodes warns that it is machine-specific)
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node
        outputs = {n.name: list(n.output) for n in optimized}
        feed = {session.get_inputs()[0].name: x}
        for _ in range(3):
            session.run(None, feed)
        totals = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            totals.append(time.perf_counter() - start)
        with open(session.end_profiling()) as f:
            events = json.load(f)
        del session
    per_node: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"][:-len("_kernel_time")]].append(event["dur"] * 1e-6)
    # the warm-up runs are profiled too: the last `runs` samples of each node
    return {name: float(np.median(v[-runs:])) for name, v in per_node.items()}, float(np.median(totals)), outputs


def onnx_node_of(name: str, group: dict[str, str], producer: dict[str, str],
                 outputs: dict[str, list[str]]) -> str | None:
    """The ONNX node an ORT profile's node name stands for (see the module docstring), or None."""
    base = name
    for suffix in ("_nchwc", "_bn"):
        base = base[:-len(suffix)] if base.endswith(suffix) else base
    if base in group:
        return base
    if base in producer:
        return producer[base]
    return next((producer[t] for t in outputs.get(name, ()) if t in producer), None)


def onnx_groups(path: str, steps: set[str], absorbed_by: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(group of each ONNX node name, producer node of each tensor)``: see the module docstring.
    ``absorbed_by``: ``{node: step}`` for the nodes of convengine's fused blocks (a batch norm before
    the ``Relu`` step that absorbed it belongs to that step, not to its input's producer)."""
    import onnx

    nodes = onnx.load(path, load_external_data=False).graph.node
    producer = {out: (n.name or f"{n.op_type}_{i}") for i, n in enumerate(nodes) for out in n.output}
    group: dict[str, str] = {}
    for i, n in enumerate(nodes):
        name = n.name or f"{n.op_type}_{i}"
        if name in steps:
            group[name] = name
        elif absorbed_by.get(name) in steps:
            group[name] = absorbed_by[name]
        else:
            source = next((producer[t] for t in n.input if t in producer), None)
            group[name] = group.get(source, name) if source else name
    return group, producer


def compare(path: str, threads: int, runs: int, batch: int = 1) -> list[dict]:
    graph = load_onnx(path, name=os.path.splitext(os.path.basename(path))[0])
    import onnx

    model = onnx.load(path, load_external_data=False).graph
    inits = {t.name for t in model.initializer}
    dims = next(i for i in model.input if i.name not in inits).type.tensor_type.shape.dim
    x = np.random.default_rng(0).random([batch] + [d.dim_value or 1 for d in dims[1:]], dtype=np.float32)
    ort_times, ort_total, ort_outputs = ort_node_times(path, x, threads, runs)
    set_num_threads(threads)
    rows, ours_total = layer_times(graph, x, engine=ce.Engine(), runs=runs)
    blocks = fused_blocks(graph, consumers(graph.nodes))
    absorbed_by = {node.name: step for step, block in blocks.items() for node in block.absorbed}
    group, producer = onnx_groups(path, {r.node for r in rows}, absorbed_by)
    ours: dict[str, float] = defaultdict(float)
    info: dict[str, tuple] = {}
    for r in rows:
        key = group.get(r.node, r.node)
        ours[key] += r.median_s
        info.setdefault(key, (r.op, r.output_shape, r.backend))
    theirs: dict[str, float] = defaultdict(float)
    for name, seconds in ort_times.items():
        node = onnx_node_of(name, group, producer, ort_outputs)
        theirs[group.get(node, ORT_ONLY) if node else ORT_ONLY] += seconds
    out = []
    for key in sorted(set(ours) | set(theirs), key=lambda k: -(ours.get(k, 0) - theirs.get(k, 0))):
        op, shape, backend = info.get(key, ("?", [], None))
        out.append({"group": key, "op": op, "shape": shape, "backend": backend,
                    "ours_s": ours.get(key, 0.0), "ort_s": theirs.get(key, 0.0)})
    print(f"{graph.name}: whole run convengine {ours_total * 1e3:.2f} ms, ORT {ort_total * 1e3:.2f} ms "
          f"(ratio {ours_total / ort_total:.2f}); nodes add to {sum(ours.values()) * 1e3:.2f} vs "
          f"{sum(theirs.values()) * 1e3:.2f} ms; load {open('/proc/loadavg').read().split()[0]}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="ONNX files (globs allowed)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    parser.add_argument("--runs", type=int, default=50, help="profiled/timed runs per runtime (default 50)")
    parser.add_argument("--batch", type=int, default=1, help="images per run (default 1)")
    parser.add_argument("--top", type=int, default=10, help="groups with the largest gap to print (default 10)")
    parser.add_argument("--json", action="store_true", help="every group as JSON lines instead")
    args = parser.parse_args(argv)
    paths = [p for pattern in args.files for p in (sorted(glob.glob(pattern)) or [pattern])]
    for path in paths:
        rows = compare(path, args.threads, args.runs, args.batch)
        if args.json:
            for row in rows:
                print(json.dumps(dict(row, model=path)))
            continue
        ours = sum(r["ours_s"] for r in rows)
        theirs = sum(r["ort_s"] for r in rows)
        print(f"  {'gap ms':>7} {'ratio':>6} {'ours ms':>8} {'ORT ms':>7}  group (op, output, backend)")
        for r in rows[:args.top]:
            ratio = r["ours_s"] / r["ort_s"] if r["ort_s"] else float("inf")
            print(f"  {(r['ours_s'] - r['ort_s']) * 1e3:7.3f} {ratio:6.2f} {r['ours_s'] * 1e3:8.3f} "
                  f"{r['ort_s'] * 1e3:7.3f}  {r['group']} ({r['op']}, {r['shape']}, {r['backend']})")
        by_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for r in rows:
            kind = r["op"].split("+")[0] + (f"/{r['backend']}" if r["backend"] else "")
            by_op[kind][0] += r["ours_s"]
            by_op[kind][1] += r["ort_s"]
        print("  by op (ours ms / ORT ms): " + ", ".join(
            f"{k} {a * 1e3:.2f}/{b * 1e3:.2f}" for k, (a, b) in sorted(by_op.items(), key=lambda kv: -kv[1][0])))
        print(f"  total of groups: {ours * 1e3:.2f} vs {theirs * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
