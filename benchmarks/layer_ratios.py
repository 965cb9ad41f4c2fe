"""Each backend's time on one convolution layer as a ratio to torch.nn.functional.conv2d.

Usage: python benchmarks/layer_ratios.py [--threads N] [--rounds R] [--dtype float32|float64]
       [--layer N,C,H,W:O,C,KH,KW:stride:padding ...]

Default layer: ResNet's 64->64 channels, 56x56, 3x3, padding 1, batch 1. All contenders run
with the same thread count, are warmed up first, and are timed in interleaved rounds;
the table shows medians and ratios from this one run.
"""

import argparse

import convengine as ce
from convengine import bench
from convengine.costmodel import measure_gemm_flops
from convengine.problem import ConvProblem


def parse_layer(text: str):
    x, w, stride, pad = text.split(":")
    return (tuple(map(int, x.split(","))), tuple(map(int, w.split(","))), int(stride), int(pad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", action="append", type=parse_layer, help="N,C,H,W:O,C,KH,KW:stride:padding")
    parser.add_argument("--threads", type=int, default=ce.get_num_threads())
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    ce.set_num_threads(args.threads)
    layers = args.layer or [((1, 64, 56, 56), (64, 64, 3, 3), 1, 1)]
    gemm = measure_gemm_flops(args.dtype)
    print(f"threads: {args.threads}; numpy GEMM: {gemm / 1e9:.1f} GFLOP/s ({args.dtype})")
    for x_shape, w_shape, stride, pad in layers:
        problem = ConvProblem.from_shapes(x_shape, w_shape, stride=stride, padding=pad, dtype=args.dtype)
        x, w, b = bench.problem_data(problem)
        executors = {}
        for info in ce.list_backends():
            if info.available and info.device == "cpu":
                executors[info.name] = ce.Engine(policy=info.name).prepare(
                    w, b, input_shape=problem.input_shape, stride=stride, padding=pad)
        peers = {}
        torch_run = bench.torch_peer(problem, x, w, b)
        if torch_run is not None:
            peers["torch"] = torch_run
        auto = ce.Engine().prepare(w, b, input_shape=problem.input_shape, stride=stride, padding=pad)
        executors[f"auto ({auto.backend})"] = auto
        timings = bench.compare(problem, executors, peers, x, rounds=args.rounds)
        print(bench.format_table(problem, timings, gemm))
        print()


if __name__ == "__main__":
    main()
