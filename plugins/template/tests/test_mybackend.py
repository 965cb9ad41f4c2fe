"""The whole test suite of a plugin can be this: convengine's conformance kit."""

from convengine.testing import BackendConformance
from convengine_mybackend.plugin import MyBackend


class TestMyBackend(BackendConformance):
    backend = MyBackend()
