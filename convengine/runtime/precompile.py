"""Compile the Numba kernels a model needs in parallel worker processes, before its first run.

Why: a cold first run compiles its kernels one after another (Numba compiles under one lock
per process), while the other cores idle; ResNet-18's four kernels take ~10 s on one core of
a 2-vCPU machine. The kernels are independent, and Numba's disk cache (``cache=True``) is
shared between processes: compiled in a worker, a kernel costs the caller a cache load.

A :class:`Kernel` names a module-level Numba dispatcher and one signature; backends list
theirs in :meth:`convengine.core.contract.Backend.kernels`. :func:`precompile` compiles the ones
neither in memory nor in the disk cache: the caller takes one share, each of
``processes - 1`` spawned workers another. Anything going wrong in a worker only costs time:
the caller then compiles the rest itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

log = logging.getLogger(__name__)


class Kernel(NamedTuple):
    """One signature of a module-level Numba dispatcher (``module.function``).

    ``signature`` is a tuple of Numba types, exactly the argument types of the call it
    stands for (a signature that differs is compiled for nothing). ``cost`` is a rough
    compile time in seconds on one core, used only to balance the workers' shares.
    """

    module: str
    function: str
    signature: tuple
    cost: float = 1.0

    @property
    def name(self) -> str:
        return f"{self.module}.{self.function}"

    def dispatcher(self):
        return getattr(importlib.import_module(self.module), self.function)


@dataclass
class PrecompileReport:
    """What :func:`precompile` did: kernels already there, compiled here, compiled in workers."""

    cached: list[str] = field(default_factory=list)
    compiled_here: list[str] = field(default_factory=list)
    compiled_in_workers: list[str] = field(default_factory=list)
    workers: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{len(self.cached)} kernels cached, {len(self.compiled_here)} compiled here, "
                f"{len(self.compiled_in_workers)} in {self.workers} worker process(es), {self.seconds:.1f} s")


def is_compiled(kernel: Kernel) -> bool:
    """Whether ``kernel`` is in memory or in Numba's disk cache (so a call compiles nothing).

    Reads the dispatcher's cache index (Numba internals, guarded): on any surprise it says
    True, which leaves the kernel to be compiled on first call, as without precompilation.
    """
    try:
        dispatcher = kernel.dispatcher()
        if kernel.signature in dispatcher.overloads:
            return True
        cache = dispatcher._cache
        # the whole key: signature, target CPU and features, the function's bytecode
        return cache._index_key(kernel.signature, dispatcher.targetctx.codegen()) in cache._cache_file._load_index()
    except Exception:  # a probe only; see the docstring
        return True


def _compile(kernels: Iterable[Kernel], tick=lambda: None, loaded: list | None = None) -> list[str]:
    """Compile (or load from the disk cache) each kernel here; the names of those that worked.

    ``loaded``, when given, receives the names of those that came from the disk cache.
    """
    done = []
    for kernel in kernels:
        try:
            dispatcher = kernel.dispatcher()
            hits = getattr(dispatcher, "_cache_hits", {}).get(kernel.signature, 0)
            dispatcher.compile(kernel.signature)
            done.append(kernel.name)
            if loaded is not None and getattr(dispatcher, "_cache_hits", {}).get(kernel.signature, 0) > hits:
                loaded.append(kernel.name)
        except Exception as exc:  # a wrong listing; the first call reports a real error
            log.warning("precompiling %s%s failed (%s: %s); it compiles on first call instead",
                        kernel.name, kernel.signature, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        tick()
    return done


def _shares(kernels: list[Kernel], n: int) -> list[list[Kernel]]:
    """Split into ``n`` shares of about equal cost: the costliest first, each to the lightest share.

    All signatures of one dispatcher go to the same share: two processes saving the same
    function's cache index at once could each drop the other's entry.
    """
    by_function: dict[str, list[Kernel]] = {}
    for kernel in kernels:
        by_function.setdefault(kernel.name, []).append(kernel)
    shares: list[list[Kernel]] = [[] for _ in range(n)]
    totals = [0.0] * n
    for group in sorted(by_function.values(), key=lambda g: -sum(k.cost for k in g)):
        i = totals.index(min(totals))
        shares[i].extend(group)
        totals[i] += sum(k.cost for k in group)
    return [share for share in shares if share]


def precompile(kernels: Iterable[Kernel], processes: int = 1, progress: bool = False) -> PrecompileReport:
    """Compile every kernel not yet compiled, over ``processes`` processes (this one included).

    ``progress`` shows a bar while there is anything to compile.
    """
    start = time.perf_counter()
    report = PrecompileReport()
    cold = []
    for kernel in dict.fromkeys(kernels):
        if is_compiled(kernel):
            report.cached.append(kernel.name)
        else:
            cold.append(kernel)
    if getattr(sys, "frozen", False):  # a frozen application's executable is the application, not Python
        processes = 1
    shares = _shares(cold, max(1, min(processes, len(cold))))
    workers = [_Worker(share) for share in shares[1:]]
    report.workers = len(workers)
    bar = _bar(len(cold), len(shares)) if progress and cold else None
    tick = bar.update if bar is not None else (lambda: None)
    try:
        if shares:
            report.compiled_here = _compile(shares[0], tick)
        for worker in workers:
            worker.wait()
            # a disk-cache load now, or the compile the worker could not do (or did into another cache)
            loaded: list[str] = []
            done = _compile(worker.kernels, tick, loaded)
            report.compiled_in_workers += loaded
            report.compiled_here += [name for name in done if name not in loaded]
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _bar(total: int, processes: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"compiling kernels ({processes} processes, once per machine)", unit="kernel",
                leave=False)


class _Worker:
    """``python -m convengine.runtime.precompile`` compiling ``kernels`` (pickled on its stdin) into the disk cache.

    A fresh interpreter, not ``multiprocessing``: that would re-import the caller's main
    script in the worker.
    """

    def __init__(self, kernels: list[Kernel]):
        self.kernels = kernels
        self.process = self.errors = None
        try:
            self.errors = tempfile.TemporaryFile()  # not a pipe: a chatty worker must not block on it
            self.process = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=self.errors, env=_worker_env(),
                                            cwd=_PACKAGE_ROOT)
            self.process.stdin.write(pickle.dumps(kernels))
            self.process.stdin.close()
        except BrokenPipeError:  # it died while starting: wait() reports its error output
            pass
        except Exception as exc:  # the caller compiles these itself
            log.warning("could not start a compile worker (%s); compiling in this process", exc)
            if self.process is not None:
                self.process.kill()
                self.process.wait()
            self.process = None

    def wait(self) -> bool:
        """True when the worker compiled all its kernels."""
        if self.errors is None:
            return False
        with self.errors:
            if self.process is None:
                return False
            if self.process.wait() != 0:
                self.errors.seek(0)
                last = self.errors.read().decode(errors="replace").strip().splitlines()[-1:]
                log.warning("a compile worker failed (%s); compiling its kernels in this process",
                            last[0] if last else f"exit code {self.process.returncode}")
                return False
            return True


#: The directory holding this ``convengine`` package: the workers import the same copy (and so
#: fill the disk cache this process reads; Numba keys it by the source file's path).
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # .../convengine/runtime/<this>


def _worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    if env.get("NUMBA_CACHE_DIR"):  # the worker runs in _PACKAGE_ROOT: keep a relative cache directory where it was
        env["NUMBA_CACHE_DIR"] = os.path.abspath(env["NUMBA_CACHE_DIR"])
    return env


def _worker_main() -> None:
    kernels = pickle.loads(sys.stdin.buffer.read())
    sys.exit(0 if len(_compile(kernels)) == len(kernels) else 1)


if __name__ == "__main__":
    _worker_main()
