"""convengine backend plugin for ``torch.nn.functional.conv2d``."""

__version__ = "0.1.0"
