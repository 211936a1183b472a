"""Fine-tuning backends behind one interface (:class:`~productdesc.backends.base.Backend`).

Built in: ``"transformers"`` (:mod:`~productdesc.backends.transformers`) and ``"unsloth"``
(:mod:`~productdesc.backends.unsloth`); plugins register more in the ``productdesc.backends``
entry-point group. :func:`get_backend` picks one by name (``"auto"``: Unsloth when installed).

Importing this package is cheap; torch and the training libraries load when a backend works.
"""

from __future__ import annotations

# The built-in backends register themselves in ``backends`` when imported: import them here, so
# that the registry is whole wherever this package is used.
from productdesc.backends import transformers as _transformers  # noqa: F401
from productdesc.backends import unsloth as _unsloth  # noqa: F401
from productdesc.backends.base import Backend, backends, get_backend, resolve_dtype

__all__ = ["Backend", "backends", "get_backend", "resolve_dtype"]
