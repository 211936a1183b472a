"""Extension points: small registries fed by ``importlib.metadata`` entry points.

Three groups exist, one registry each, kept beside what it registers:

=========================  ===========================================  ======================
entry-point group          registry                                     an entry point names
=========================  ===========================================  ======================
``productdesc.cleaners``   :data:`productdesc.data.cleaning.cleaners`   a cleaning step class
``productdesc.templates``  :data:`productdesc.prompts.base.templates`   a prompt template class
``productdesc.backends``   :data:`productdesc.backends.base.backends`   a backend class
=========================  ===========================================  ======================

This module holds only the :class:`Registry`: it knows none of the modules above it. Each
built-in registers itself where it is defined (``@templates.builtin("alpaca")`` above
:class:`~productdesc.prompts.PromptTemplate`), as a PEFT tuner does in its own package, and
its package imports every built-in module, so a registry is whole once its package is
imported. A built-in and a plugin are indistinguishable once loaded. Entry points load
lazily, when a registry is first read, so ``import productdesc`` stays cheap and a broken
plugin can never break it.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."productdesc.cleaners"]
    strip_boilerplate = "my_package.cleaning:StripBoilerplate"

Set ``PRODUCTDESC_DISABLE_PLUGIN_AUTOLOAD=1`` to load only the built-ins (as pytest's
``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, NamedTuple, TypeVar

from productdesc._moved import forward
from productdesc.errors import UserError

__all__ = ["PluginError", "PluginInfo", "PluginWarning", "Registry", "class_with"]

# The registries moved beside what they register (until 0.2): cleaners, templates, backends.
__getattr__ = forward(
    __name__, "productdesc.data.cleaning", "productdesc.prompts.base", "productdesc.backends.base"
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

_BUILTIN_SOURCE = "productdesc (built-in)"
DISABLE_AUTOLOAD_ENV = "PRODUCTDESC_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(UserError, LookupError):
    """A name is unknown to a registry, or is registered twice."""


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded and was skipped."""


class PluginInfo(NamedTuple):
    """One registered plugin: its name, the object, and where it came from."""

    name: str
    obj: Any
    source: str  # "productdesc (built-in)" or "<distribution> <version>"
    target: str  # "module:attribute"


class Registry(Generic[T]):
    """Name -> object mapping for one extension point.

    Args:
        group: The entry-point group, e.g. ``"productdesc.cleaners"``.
        kind: What the objects are, for messages ("cleaning step").
        check: Returns an error message for an object of the wrong type, or ``None``
            (e.g. :func:`class_with`).
    """

    def __init__(self, group: str, kind: str, check: Callable[[Any], str | None]) -> None:
        self.group = group
        self.kind = kind
        self._check = check
        self._items: dict[str, PluginInfo] = {}
        self._loaded = False
        self._lock = threading.RLock()

    # -- registration ---------------------------------------------------------------------
    def builtin(self, name: str) -> Callable[[T], T]:
        """A class decorator that registers a built-in under ``name``, where it is defined.

        Built-ins come before every entry point: a plugin that reuses the name is skipped with
        a warning. So a built-in must register when its module is imported, before the
        registry is first read; later is a bug in productdesc, and raises.
        """

        def register(obj: T) -> T:
            problem = self._check(obj)
            if problem:
                raise PluginError(f"built-in {self.kind} {name!r}: {problem}")
            with self._lock:
                if self._loaded:
                    raise RuntimeError(
                        f"built-in {self.kind} {name!r} registered after {self.group!r} was read"
                    )
                self._add(PluginInfo(name, obj, _BUILTIN_SOURCE, _qualname(obj)))
            return obj

        return register

    def register(self, name: str, obj: T, *, source: str = "code", target: str = "") -> T:
        """Register ``obj`` under ``name``; a name already taken is an error.

        Usable as a plain call or, with ``functools.partial``, as a decorator.
        """
        problem = self._check(obj)
        if problem:
            raise PluginError(f"{self.kind} {name!r} from {source}: {problem}")
        with self._lock:
            self._ensure_loaded()
            self._add(PluginInfo(name, obj, source, target or _qualname(obj)))
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mainly for tests and for users replacing a built-in)."""
        with self._lock:
            self._ensure_loaded()
            self._items.pop(name, None)

    def _add(self, info: PluginInfo) -> None:
        existing = self._items.get(info.name)
        if existing is not None:
            raise PluginError(
                f"{self.kind} {info.name!r} is registered twice: by {existing.source} "
                f"({existing.target}) and by {info.source} ({info.target}); "
                f"uninstall one of them or rename its entry point in {self.group!r}"
            )
        self._items[info.name] = info

    # -- loading ----------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            if os.environ.get(DISABLE_AUTOLOAD_ENV):
                return
            for ep in entry_points(group=self.group):
                dist = getattr(ep, "dist", None)
                if dist is not None and dist.name == "productdesc":
                    continue  # our own built-ins, already registered where they are defined
                self._load_entry_point(ep, dist)

    def _load_entry_point(self, ep: Any, dist: Any) -> None:
        source = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
        try:
            obj = ep.load()
            problem = self._check(obj)
            if problem:
                raise TypeError(problem)
            self._add(PluginInfo(ep.name, obj, source, ep.value))
        except Exception as exc:  # a plugin may fail in any way; we report it and carry on
            msg = (
                f"productdesc: skipped {self.kind} plugin {ep.name!r} ({ep.value}) "
                f"from {source}: {type(exc).__name__}: {exc}"
            )
            logger.warning(msg)
            warnings.warn(msg, PluginWarning, stacklevel=3)

    # -- lookup -----------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as ``name``; an unknown name lists the known ones."""
        self._ensure_loaded()
        try:
            return self._items[name].obj
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def names(self) -> list[str]:
        """Registered names, in registration order (built-ins first)."""
        self._ensure_loaded()
        return list(self._items)

    def infos(self) -> Iterator[PluginInfo]:
        """Every registered plugin with its source, for ``productdesc plugins``."""
        self._ensure_loaded()
        return iter(list(self._items.values()))


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


def class_with(*methods: str) -> Callable[[Any], str | None]:
    """A registry's ``check``: the object must be a class with these callable attributes."""

    def check(obj: Any) -> str | None:
        if not isinstance(obj, type):
            return f"expected a class, got {type(obj).__name__}"
        missing = [m for m in methods if not callable(getattr(obj, m, None))]
        if missing:
            return f"class {obj.__qualname__} lacks {', '.join(missing)}"
        return None

    return check
