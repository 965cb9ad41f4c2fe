"""convengine-correlate: the backend of docs/plugins.md's walk-through (``scipy.signal.correlate``)."""

__version__ = "0.1.0"
