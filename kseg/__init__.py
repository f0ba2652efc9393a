"""kseg: semantic segmentation for Keras 3."""

__version__ = "0.1.0"

from kseg.errors import KsegError  # noqa: E402,F401
