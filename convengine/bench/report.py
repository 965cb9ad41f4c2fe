"""The benchmark's tables as text: one layer's contenders, a catalogue model's totals, a whole model.

Every table goes through :func:`convengine.runtime.tables.format_table`; this module only
decides the columns and how each number is written. A row that did not run says why in
its last column, cut to one line (:func:`cut`).
"""

from __future__ import annotations

from typing import Optional

from ..core.problem import ConvProblem
from ..models.loading import is_model_file
from ..runtime.tables import format_table
from .alone import AloneReport
from .compare import Timing
from .models import ModelReport


def cut(text: Optional[str], limit: int = 110, *, clause: bool = False) -> str:
    """The first line of ``text`` (with ``clause``, only up to its first ``"; "``), cut to ``limit`` characters."""
    text = (text or "").splitlines()[0] if text else ""
    if clause:
        text = text.split("; ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rate(gflops: float) -> str:
    return f"{gflops:.1f}" if gflops >= 1 else f"{gflops:.2g}"


def _seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _mib(value: Optional[int]) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def format_layer(problem: ConvProblem, timings: list[Timing], gemm_flops: Optional[float] = None) -> str:
    """One row per contender: median time, ratio to the fastest peer, GFLOP/s and share of GEMM peak."""
    peer_times = [t.median_s for t in timings if t.kind == "peer" and t.median_s]
    reference = min(peer_times) if peer_times else None
    rows = []
    for t in timings:
        if t.median_s is None:
            rows.append((t.name, "-", "-", "-", cut(t.error, 70, clause=True)))
            continue
        ratio = f"{t.median_s / reference:.2f}x" if reference else "-"
        share = f"{t.gflops * 1e9 / gemm_flops:.0%}" if gemm_flops else ""
        rows.append((t.name, f"{t.median_s * 1e3:.3f} ms", ratio, _rate(t.gflops), share))
    header = ("contender", "median", "vs peer", "GFLOP/s", "of GEMM" if gemm_flops else "")
    return f"{problem}  ({problem.flops / 1e9:.3f} GFLOP)\n" + format_table(header, rows)


def format_totals(total: dict, gemm_flops: float) -> str:
    """A catalogue model's totals (:func:`.compare.model_totals`): each contender's layers added up."""
    rows = []
    for t in total["results"]:
        if t["total_s"] is None:
            rows.append((t["contender"], "-", "-", "-", "(not every layer ran)"))
            continue
        ratio = f"{t['ratio_to_peer']:.2f}x" if t["ratio_to_peer"] else "-"
        rows.append((t["contender"], f"{t['total_s'] * 1e3:.2f} ms", ratio, f"{t['gflops']:.1f}",
                     f"{t['gflops'] * 1e9 / gemm_flops:.0%}"))
    title = (f"{total['model']}: all {total['convolutions']} convolutions ({total['layers']} distinct shapes, "
             f"{total['flops'] / 1e9:.2f} GFLOP), layer medians weighted by occurrence")
    return title + "\n" + format_table(("contender", "total", "vs peer", "GFLOP/s", "of GEMM"), rows)


def format_model(report: ModelReport, memory: bool = False) -> str:
    """One model's table: a row per contender, those that did not run last, with why."""
    source = "zoo" if not is_model_file(report.source) else report.source
    size = f"{report.macs / 1e9:.2f} GMACs" if report.macs >= 1e8 else f"{report.macs / 1e6:.2f} MMACs"
    lines = [f"{report.model} ({source}): batch {report.batch}, input {tuple(report.input_shape)} {report.dtype}, "
             f"{report.convolutions} convolutions ({report.distinct_convolutions} distinct), {size}"]
    if report.tuning_s is not None:
        lines.append(f"tuning (before timing, fresh cache): {report.tuning_s:.1f} s")
    header = ["contender", "median", "vs ORT", "GMAC/s", "of GEMM", "first call"]
    if memory:
        header += ["cold call", "peak RSS", "RSS vs ORT"]
    header.append("layers")
    rows = []
    for r in report.results:
        if r.median_s is None and not r.ran:
            rows.append([r.contender, "-"] + [""] * (len(header) - 3) + [cut(r.error)])
            continue
        row = [r.contender, _seconds(r.median_s), f"{r.ratio_to_ort:.2f}x" if r.ratio_to_ort else "-",
               f"{r.gmacs:.1f}" if r.gmacs else "-", f"{r.gemm_share:.0%}" if r.gemm_share else "-",
               _seconds(r.first_call_s)]
        mem = r.memory
        if memory:
            if mem is None or mem.error:
                row += ["-", "-", "-"]
            else:
                row += [_seconds(mem.cold_first_call_s), _mib(mem.peak_extra_bytes),
                        f"{mem.ratio_to_ort:.2f}x" if mem.ratio_to_ort else "-"]
        last = ", ".join(f"{name} x{n}" for name, n in (r.backends or {}).items())
        notes = [text for text in (r.error, mem.error if mem else None) if text]
        if mem and mem.retuned_layers:
            notes.append(f"the fresh process first re-tuned {mem.retuned_layers} layers (tuning keys differ "
                         f"between processes)")
        row.append("; ".join([last] * bool(last) + [cut(t) for t in notes]))
        rows.append(row)
    lines.append(format_table(header, rows))
    return "\n".join(lines)


def format_alone(report: AloneReport) -> str:
    """``--onnx``: convengine and ONNX Runtime, each alone in fresh processes; the per-layer steps when measured."""
    size = f"{report.macs / 1e9:.2f} GMACs" if report.macs >= 1e8 else f"{report.macs / 1e6:.2f} MMACs"
    source = report.source if report.source == report.onnx else f"{report.source}; ORT on {report.onnx}"
    lines = [f"{report.model} ({source}): batch {report.batch}, input {tuple(report.input_shape)} {report.dtype}, "
             f"{report.convolutions} convolutions, {size}; {report.threads} threads; each runtime alone in "
             f"{report.rounds} fresh processes, alternating"]
    header = ("runtime", "median", "fastest-slowest", "vs ORT", "CPU/call", "CPU vs ORT", "peak RSS", "RSS vs ORT",
              "loading peak", "cold call", "layers")
    rows = []
    for r in report.results:
        if r.median_s is None:
            rows.append([r.runtime, "-"] + [""] * (len(header) - 3) + [cut(r.error)])
            continue
        fastest, slowest = r.spread_s
        notes = ", ".join(f"{name} x{n}" for name, n in (r.backends or {}).items())
        if r.error:
            notes = "; ".join(t for t in (notes, f"a later process failed: {cut(r.error)}") if t)
        rows.append([r.runtime, _seconds(r.median_s), f"{_seconds(fastest)} - {_seconds(slowest)}",
                     f"{r.ratio_to_ort:.2f}x" if r.ratio_to_ort else "-", _seconds(r.cpu_per_call_s),
                     f"{r.cpu_ratio_to_ort:.2f}x" if r.cpu_ratio_to_ort else "-", _mib(r.peak_extra_bytes),
                     f"{r.memory_ratio_to_ort:.2f}x" if r.memory_ratio_to_ort else "-", _mib(r.load_peak_bytes),
                     _seconds(r.cold_first_call_s),
                     notes])
    lines.append(format_table(header, rows))
    if report.layers is not None:
        added = sum(r.median_s for r in report.layers)
        lines += ["", f"convengine ({report.convengine.runtime}) per step (executor timings, this process; whole run "
                      f"{_seconds(report.per_layer_total_s)}, the steps' medians add to {_seconds(added)}):"]
        rows = [(r.node, r.op, "x".join(map(str, r.output_shape)), r.backend or "-", f"{r.median_s * 1e3:.3f}",
                 f"{r.share:.1%}", f"{r.macs / r.median_s / 1e9:.1f}" if r.macs and r.median_s > 0 else "")
                for r in report.layers]
        lines.append(format_table(("node", "op", "output shape", "backend", "median ms", "share", "GMAC/s"), rows))
    return "\n".join(lines)
