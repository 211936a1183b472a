"""An example productdesc plugin package.

It registers, through entry points in its ``pyproject.toml``:

* the cleaning step ``strip_boilerplate`` (:class:`~.cleaning.StripBoilerplate`), and
* the prompt template ``alpaca_pt`` (:class:`~.templates.PortugueseTemplate`).

Importing this package imports nothing heavy; productdesc loads the two classes when its
registries are first read.
"""

__version__ = "0.1.0"
