"""convengine.dask on a real LocalCluster of two worker processes: predict, fleet tuning, the CLI, faults.

Nothing of Dask is mocked. The oracle is ``graph.run`` in this process on the same images
(itself checked against torch and ONNX Runtime elsewhere); LeNet keeps the models small. The
only thing simulated is a second kind of machine, for fleet tuning: one worker is told a
different hardware fingerprint. Workers keep their tuning cache in a temporary directory, so
nothing of that fingerprint reaches the user's cache.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from convengine.cli import main
from convengine.graph.plan import Plan, PlanSet, PlanWarning
from convengine.models import lenet

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
cd = pytest.importorskip("convengine.dask")

TIMEOUT = 60  # seconds for anything the cluster does; the tests take a few


@contextlib.contextmanager
def _environment_kept():
    """Dask's nanny writes the workers' start-up variables into this process's environment: undo it."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    cache = tmp_path_factory.mktemp("worker-cache")
    with _environment_kept(), cd.local_cluster(2, threads_per_worker=1, dashboard_address=":0",
                                               env={"CONVENGINE_CACHE_DIR": str(cache)}) as cluster, \
            distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=TIMEOUT)
        yield client


@pytest.fixture(autouse=True)
def _no_environment_left_behind():
    with _environment_kept():
        yield


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 28, 28)).astype(np.float32)


def _model_status(client, result) -> dict:
    """``{worker: status}`` of the model behind ``result`` (its plugin name prefixes the array's name)."""
    return {address: status for address, models in cd.status(client).items()
            for name, status in models.items() if result.name.startswith(name)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- predict ----------------------------------------------------------------------------------


def test_predict_equals_graph_run_and_prepares_once_per_worker(client, tmp_path):
    graph = lenet(seed=1)
    x = _images(24)
    expected = graph.run(x)
    np.save(tmp_path / "images.npy", x)
    results = [cd.predict(graph, da.from_array(x, chunks=4), client=client),
               cd.predict(graph, x, client=client, batch_size=4),
               cd.predict(graph, tmp_path / "images.npy", client=client, batch_size=4)]
    for result in results:
        assert isinstance(result, da.Array) and result.chunks == ((4,) * 6, (10,))
        np.testing.assert_allclose(result.compute(), expected, rtol=1e-6, atol=1e-6)
    status = _model_status(client, results[0])
    assert len(status) == 2  # both worker processes hold the model...
    assert [s["prepared"] for s in status.values()] == [1, 1]  # ...prepared once each, for 3 x 6 chunks
    assert sum(s["chunks"] for s in status.values()) == 18 and all(s["chunks"] > 0 for s in status.values())
    assert all(s["threads"] == 1 for s in status.values())  # a 1-thread worker runs convengine on 1 thread

    def start_environment(names):  # nested: pickled by value, run on the workers
        """The variables the process was started with (glibc and OpenBLAS read them then), not set since."""
        with open("/proc/self/environ", "rb") as f:
            pairs = dict(entry.split(b"=", 1) for entry in f.read().split(b"\0") if b"=" in entry)
        return {name: pairs.get(name.encode(), b"").decode() for name in names}

    if os.path.exists("/proc/self/environ"):
        wanted = cd.worker_environment(1)
        assert all(env == wanted for env in client.run(start_environment, sorted(wanted)).values())
    # the weights travel in the plugin, never in the tasks: the predict layer of the graph is tiny
    layer = dict(results[0].__dask_graph__().layers[results[0].name])
    weights = sum(p.nbytes for p in graph.params.values())
    assert len(pickle.dumps(layer)) < weights / 20


def test_input_the_model_cannot_take_fails_before_any_work(client):
    before = cd.status(client)
    graph = lenet(seed=3)
    with pytest.raises(ValueError, match=r"takes images of shape \(N, 1, 28, 28\), got \(4, 3, 28, 28\)"):
        cd.predict(graph, np.zeros((4, 3, 28, 28), np.float32), client=client)
    with pytest.raises(ValueError, match=r"takes float32 images, got float64"):
        cd.predict(graph, np.zeros((4, 1, 28, 28)), client=client)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        cd.predict(graph, _images(4), client=client, batch_size=0)
    with pytest.raises(ValueError, match=r"must be a \.npy file or a \.zarr store"):
        cd.predict(graph, "images.png", client=client)
    assert cd.status(client) == before  # nothing reached the workers


def test_without_a_client_predict_starts_the_embedded_local_cluster(tmp_path):
    """No client given and none current: a LocalCluster of processes, sized by Dask's rule for this machine."""
    from dask.system import CPU_COUNT
    from distributed.deploy.utils import nprocesses_nthreads

    script = ("import numpy as np, distributed, convengine.dask as cd\n"
              "y = cd.predict('lenet', np.zeros((6, 1, 28, 28), np.float32), batch_size=2)\n"
              "print(y.compute().shape, cd.describe(distributed.default_client()))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    workers, threads = nprocesses_nthreads(CPU_COUNT)
    shape = f"{workers} x {threads} thread{'s' if threads > 1 else ''}"
    assert f"(6, 10) {workers} worker{'s' if workers > 1 else ''} ({shape})" in run.stdout


# -- fleet tuning -----------------------------------------------------------------------------


def test_fleet_tuning_gives_a_plan_per_fingerprint_and_each_machine_picks_its_own(client, tmp_path, capsys):
    def _pretend_other_hardware(cpu_model):  # nested: pickled by value, run on a worker
        """This worker's hardware fingerprint from now on names ``cpu_model`` (``None`` restores it)."""
        import convengine.runtime.hardware as hardware

        real = getattr(hardware, "_real_collect", hardware._collect)
        hardware._real_collect = real
        fake = {**real(), "cpu_model": cpu_model}
        hardware._collect = real if cpu_model is None else (lambda: fake)

    client.wait_for_workers(2, timeout=TIMEOUT)
    a, b = sorted(client.scheduler_info()["workers"])
    client.run(_pretend_other_hardware, "simulated CPU B", workers=[b])
    try:
        digests = {address: digest for address, (digest, _) in client.run(cd.worker.fingerprint).items()}
        assert digests[a] != digests[b]
        graph = lenet()
        plans = cd.tune(graph, client, budget_s=0.02, output=tmp_path / "plans.json")
        assert set(plans.plans) == {digests[a], digests[b]}
        assert plans.plans[digests[b]].host["cpu_model"] == "simulated CPU B"
        assert all(set(p.layers) == {"conv1", "conv2"} for p in plans.plans.values())

        # this process runs on worker a's hardware: the plans file gives it a's plan, and says so
        choice = PlanSet.read(tmp_path / "plans.json").choose(graph)
        assert choice.plan == plans.plans[digests[a]] and "one of 2" in choice.message
        assert main(["run", "lenet", "--plan", str(tmp_path / "plans.json"), "--repeat", "1"]) == 0
        assert "matching this hardware" in capsys.readouterr().out

        # on the cluster each worker runs the plan of its own fingerprint
        x = _images(8)
        result = cd.predict(graph, x, client=client, batch_size=4, plan=tmp_path / "plans.json")
        np.testing.assert_allclose(result.compute(), graph.run(x), rtol=1e-6, atol=1e-6)
        status = _model_status(client, result)
        assert digests[a] in status[a]["plan"] and "simulated CPU B" in status[b]["plan"]
        assert all(str(tmp_path / "plans.json") in s["plan"] for s in status.values())  # says which file
        assert status[a]["planned"] and status[b]["planned"]

        # a file without a plan for this hardware: auto, with a warning, here and on the workers
        PlanSet.of([plans.plans[digests[b]]]).save(tmp_path / "only-b.json")
        with pytest.warns(PlanWarning, match="no plan for this hardware"):
            assert Plan.load(tmp_path / "only-b.json", graph) is None
        with pytest.warns(PlanWarning, match=f"worker {a}.*no plan for this hardware"):
            result = cd.predict(graph, x, client=client, batch_size=4, plan=tmp_path / "only-b.json")
        np.testing.assert_allclose(result.compute(), graph.run(x), rtol=1e-6, atol=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PlanWarning)
            assert main(["run", "lenet", "--plan", str(tmp_path / "only-b.json"), "--repeat", "1"]) == 0
        assert "policy auto" in capsys.readouterr().out

        # the same from the command line
        address = client.scheduler.address
        assert main(["tune", "lenet", "--scheduler", address, "--budget", "0.02", "-o", str(tmp_path / "cli.json")]) == 0
        assert set(PlanSet.read(tmp_path / "cli.json").plans) == {digests[a], digests[b]}
        assert "plans for 2 kinds of machine" in capsys.readouterr().out
    finally:
        client.run(_pretend_other_hardware, None, workers=[b])


# -- command line -----------------------------------------------------------------------------


def test_cli_predict_writes_zarr_chunk_by_chunk_with_a_progress_bar(client, tmp_path, capsys):
    x = _images(18, seed=4)
    np.save(tmp_path / "images.npy", x)
    out = tmp_path / "out.zarr"
    assert main(["predict", "lenet", str(tmp_path / "images.npy"), "-o", str(out), "--scheduler",
                 client.scheduler.address, "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "100% Completed" in printed and f"wrote {out}: float32 (18, 10)" in printed
    stored = zarr.open_array(str(out), mode="r")
    assert stored.chunks == (4, 10)  # one chunk per task, written by the worker that computed it
    np.testing.assert_allclose(stored[:], lenet().run(x), rtol=1e-6, atol=1e-6)


def test_cli_predict_on_its_own_local_cluster_from_zarr_to_npy(tmp_path, capsys):
    x = _images(10, seed=5)
    stored = zarr.open_array(str(tmp_path / "images.zarr"), mode="w", shape=x.shape, chunks=(3, 1, 28, 28), dtype=x.dtype)
    stored[:] = x
    assert main(["predict", "lenet", str(tmp_path / "images.zarr"), "-o", str(tmp_path / "out.npy"),
                 "--workers", "1", "--batch-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "1 worker (1 x 2 threads)" in printed and "lenet, 2 threads" in printed  # one worker, every core
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), lenet().run(x), rtol=1e-6, atol=1e-6)


def test_unreachable_scheduler_and_wrong_shapes_are_one_clear_error(tmp_path, capsys):
    np.save(tmp_path / "images.npy", _images(4))
    np.save(tmp_path / "rgb.npy", np.zeros((4, 3, 28, 28), np.float32))
    nobody = f"tcp://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    assert main(["predict", "lenet", str(tmp_path / "images.npy"), "-o", str(tmp_path / "out.npy"),
                 "--scheduler", nobody, "--timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"no Dask scheduler answers at {nobody}" in err
    assert not (tmp_path / "out.npy").exists()
    # the shape is checked before the scheduler is asked
    assert main(["predict", "lenet", str(tmp_path / "rgb.npy"), "-o", str(tmp_path / "out.npy"),
                 "--scheduler", nobody, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "takes images of shape (N, 1, 28, 28), got (4, 3, 28, 28)" in err
    assert time.perf_counter() - start < 5 + 1  # the second error came without waiting for the scheduler
    assert main(["tune", "lenet", "--scheduler", nobody, "--timeout", "1"]) == 2
    assert "no Dask scheduler answers" in capsys.readouterr().err


def test_missing_extra_is_one_clear_error(tmp_path):
    np.save(tmp_path / "images.npy", _images(4))
    script = ("import sys; sys.modules['distributed'] = None\n"  # as if the extra were not installed
              "from convengine.cli import main\n"
              f"sys.exit(main(['predict', 'lenet', {str(tmp_path / 'images.npy')!r}, '-o', 'out.npy']))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1
    assert "convengine.dask needs the 'dask' extra (distributed not installed)" in run.stderr
    assert 'pip install "convengine[dask]"' in run.stderr and not (tmp_path / "out.npy").exists()


# -- faults -----------------------------------------------------------------------------------


def test_a_worker_killed_mid_run_loses_nothing(client):
    """kill -9 one worker process while chunks are held and running on it: its chunks are recomputed elsewhere."""
    client.wait_for_workers(2, timeout=TIMEOUT)
    graph = lenet(seed=2)
    x = _images(32, seed=6)

    def slow_read(block):  # a slow stage before the model, so that the kill lands mid-run
        time.sleep(0.2)
        return block

    images = da.from_array(x, chunks=(2, 1, 28, 28)).map_blocks(slow_read, dtype=x.dtype)
    result = cd.predict(graph, images, client=client)
    future = client.compute(result)
    pids = client.run(os.getpid)
    deadline = time.monotonic() + TIMEOUT
    while True:  # until both workers have run a chunk: each holds results the kill can lose
        status = _model_status(client, result)
        if len(status) == 2 and all(s["chunks"] > 0 for s in status.values()):
            break
        assert time.monotonic() < deadline and not future.done(), status
        time.sleep(0.05)
    victim = sorted(status)[0]
    held = [key for key in client.has_what()[victim] if result.name in str(key)]
    assert held  # outputs the kill loses: they must be computed again
    os.kill(pids[victim], signal.SIGKILL)
    assert not future.done()  # the kill was mid-run
    np.testing.assert_allclose(future.result(timeout=TIMEOUT), graph.run(x), rtol=1e-6, atol=1e-6)
    assert victim not in client.scheduler_info()["workers"]
    client.wait_for_workers(2, timeout=TIMEOUT)  # the nanny restarted it, with the model prepared again
