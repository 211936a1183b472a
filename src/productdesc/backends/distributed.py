"""Moved to :mod:`productdesc.distributed`; this path works, with a warning, until 0.2."""

from productdesc._moved import forward

__getattr__ = forward(__name__, "productdesc.distributed")
