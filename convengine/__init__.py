"""convengine: 2-D convolution with a choice of backends, and the means to choose well."""

__version__ = "0.1.0"
