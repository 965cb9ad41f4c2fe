"""Images in and outputs out, chunk by chunk: ``.npy`` files and ``.zarr`` stores read and written by the workers.

Paths are opened where the chunks are computed, so a path must name storage every worker
can reach (a shared file system, or a zarr URL such as ``s3://...``); nothing passes through
the client but metadata. Output is written by the workers chunk by chunk, so no process ever
holds the whole result.
"""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
from dask.base import tokenize

SUFFIXES = (".npy", ".zarr")


def _suffix(path, what: str) -> str:
    suffix = os.path.splitext(str(path).rstrip("/"))[1].lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{what} {os.fspath(path)!r} must be a .npy file or a .zarr store")
    return suffix


class NpyFile:
    """A ``.npy`` file, sliced by memory mapping it where the slice is wanted (for ``da.from_array``).

    Pickles as its path: a task reading a chunk maps the file on its worker and copies out
    only that chunk, instead of the client reading the whole file.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        header = np.load(self.path, mmap_mode="r")  # reads the header only
        self.shape, self.dtype = header.shape, header.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        return np.array(np.load(self.path, mmap_mode="r")[index])

    def __setitem__(self, index, value) -> None:  # da.store writes each output chunk through this
        target = np.load(self.path, mmap_mode="r+")
        target[index] = value
        target.flush()


def read(path, batch_size: int) -> da.Array:
    """A ``.npy`` file or ``.zarr`` store as a lazy dask array (a ``.npy`` file in chunks of ``batch_size``
    on the first axis, a ``.zarr`` store in its own chunks)."""
    suffix = _suffix(path, "images")
    if not os.path.exists(path) and "://" not in str(path):
        raise ValueError(f"images {os.fspath(path)!r} do not exist")
    if suffix == ".zarr":
        return da.from_zarr(os.fspath(path))
    source = NpyFile(path)
    stat = os.stat(source.path)
    return da.from_array(source, chunks=(batch_size,) + source.shape[1:] if source.ndim else (), asarray=True, fancy=False,
                         name=f"npy-{tokenize(source.path, stat.st_mtime_ns, stat.st_size)}")


def save(array: da.Array, path, *, compute: bool = True):
    """Write ``array`` to ``path`` (``.npy`` or ``.zarr``), each chunk by the worker that computed it.

    With ``compute=False`` returns the lazy write (a ``dask.delayed``) to compute, e.g. with a
    progress bar, instead of writing now. A ``.npy`` file is created at its full size first (its
    pages stay unwritten until a chunk lands), then filled in place; a ``.zarr`` store gets the
    array's chunks as its own. An existing output is replaced.
    """
    suffix = _suffix(path, "output")
    if suffix == ".zarr":
        if len(set(array.chunks[0][:-1])) > 1 or (len(array.chunks[0]) > 1 and array.chunks[0][-1] > array.chunks[0][0]):
            array = array.rechunk({0: array.chunks[0][0]})  # zarr needs regular chunks
        return da.to_zarr(array, os.fspath(path), overwrite=True, compute=compute)
    np.lib.format.open_memmap(os.fspath(path), mode="w+", dtype=array.dtype, shape=array.shape)
    return da.store(array, NpyFile(path), lock=False, compute=compute)


def check_output(path) -> None:
    """Raise ``ValueError`` unless ``path`` can be an output (``.npy`` or ``.zarr``): checked before any work."""
    _suffix(path, "output")
