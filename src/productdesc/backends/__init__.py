"""Fine-tuning backends behind one interface (:class:`~productdesc.backends.base.Backend`).

Built in: ``"transformers"`` (:mod:`~productdesc.backends.transformers`) and ``"unsloth"``
(:mod:`~productdesc.backends.unsloth`); plugins register more in the ``productdesc.backends``
entry-point group. :func:`get_backend` picks one by name (``"auto"``: Unsloth when installed).

Importing this package is cheap; torch and the training libraries load when a backend works.
"""

from __future__ import annotations

from productdesc.backends.base import Backend, get_backend, resolve_dtype

__all__ = ["Backend", "get_backend", "resolve_dtype"]
