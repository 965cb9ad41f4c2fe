"""``convengine predict``: a model over a file of images on a Dask cluster, outputs written chunk by chunk."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from . import arguments
from .commands import command
from .models import _model_arg


def _predict_args(parser):
    _model_arg(parser)
    parser.add_argument("input", help="a .npy file or .zarr store of NCHW images, readable by every worker")
    parser.add_argument("--output", "-o", required=True,
                        help="the .npy file or .zarr store to write (by the workers, chunk by chunk)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786)")
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a LocalCluster of N worker processes, the cores shared among them "
                            "(default without --scheduler: Dask's sizing for this machine)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per chunk (default 32)")
    parser.add_argument("--policy", type=arguments.policy, default="auto",
                        help="the engine's policy on the workers (auto, tune, a backend, a preference list)")
    parser.add_argument("--plan", help="a plan or plans file (convengine tune [--scheduler]); each worker runs "
                                       "the plan for its hardware")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the scheduler and its first worker (with --scheduler)")


@contextlib.contextmanager
def _client(ce_dask, args):
    import distributed

    with contextlib.ExitStack() as stack:
        if args.scheduler:
            client = stack.enter_context(ce_dask.connect(args.scheduler, timeout=args.timeout))
            try:
                client.wait_for_workers(1, timeout=args.timeout)
            except TimeoutError:
                raise ConnectionError(f"the scheduler at {args.scheduler} has no workers "
                                      f"(waited {args.timeout:g} s)") from None
        else:
            cluster = stack.enter_context(ce_dask.local_cluster(args.workers))
            client = stack.enter_context(distributed.Client(cluster))
        yield client


@command("predict", "run a model over a .npy/.zarr of images on a Dask cluster, writing the outputs chunk by chunk",
         _predict_args)
def _predict(args) -> int:
    from .. import dask as ce_dask  # ImportError (the extra is missing): one line from main()
    from ..graph.plan import PlanSet

    # everything checkable is checked before a cluster starts or a scheduler is asked
    ce_dask.check_output(args.output)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    graph = ce_dask.as_graph(args.model)
    images = ce_dask.as_images(args.input, graph, args.batch_size or ce_dask.DEFAULT_BATCH_SIZE)
    plans = None
    if args.plan:
        plans = PlanSet.read(args.plan)
        plans.check(graph)
    log = logging.getLogger("convengine.dask")  # predict() says there which plan each worker runs
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with _client(ce_dask, args) as client:
            import distributed

            print(f"cluster: {ce_dask.describe(client)}")
            print(f"model {graph.name}: {images.shape[0]} images in {len(images.chunks[0])} chunks of "
                  f"{images.chunks[0][0]}; preparing on every worker")
            result = ce_dask.predict(graph, images, client=client, policy=args.policy, plan=plans)
            start = time.perf_counter()
            future = client.compute(ce_dask.save(result, args.output, compute=False))
            distributed.progress(future)
            future.result()
            seconds = time.perf_counter() - start
    finally:
        log.removeHandler(handler)
    print(f"\nwrote {args.output}: {result.dtype} {tuple(result.shape)}, {images.shape[0] / seconds:.1f} images/s "
          f"({seconds:.1f} s)")
    return 0
