"""convengine-winograd: a Winograd F(2x2, 3x3) convolution backend for convengine.

Installing the distribution registers the ``winograd`` backend through the ``convengine``
entry-point group (see :mod:`convengine_winograd.plugin`). Importing this package is cheap:
Numba and the kernels load only when a convolution is prepared.
"""

__version__ = "0.2.0"  # 0.2: NaN and Inf take an exact path (a finiteness check per call)
