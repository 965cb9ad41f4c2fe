"""What every backend built on Numba kernels shares: availability and fingerprint."""

from __future__ import annotations

from ..core.contract import Backend


class NumbaBackend(Backend):
    """A CPU backend whose kernels are compiled by Numba (imported lazily, when first needed)."""

    def availability(self):
        try:
            import numba  # noqa: F401  (only whether Numba is installed)
        except ImportError as exc:
            return f"numba is not importable: {exc}"
        return None

    def fingerprint(self) -> dict:
        import numba
        import numpy

        # numpy's BLAS is part of the host fingerprint already
        return {"version": self.version, "numba": numba.__version__, "numpy": numpy.__version__}
