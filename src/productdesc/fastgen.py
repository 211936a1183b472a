"""Moved to :mod:`productdesc.generation.static_decoder` and
:mod:`productdesc.generation.fusion`; this path works, with a warning, until 0.2."""

from productdesc._moved import forward

__getattr__ = forward(
    __name__, "productdesc.generation.static_decoder", "productdesc.generation.fusion"
)
