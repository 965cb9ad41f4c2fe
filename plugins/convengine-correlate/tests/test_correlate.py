"""The correlate backend against convengine's conformance kit, with the kit's defaults."""

from convengine.testing import BackendConformance
from convengine_correlate.plugin import CorrelateBackend


class TestCorrelate(BackendConformance):
    backend = CorrelateBackend()
