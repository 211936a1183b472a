"""Exceptions a user can act on. The CLI prints them as one line; library callers catch them."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a missing file, a bad option, a model that is not installed."""


class DataFormatError(UserError):
    """The input is not JSON Lines, or a compressed file is truncated or corrupt."""


class OutputDirError(UserError):
    """The output directory is unusable: unwritable, or holds results of another config."""


class ModelNotAvailableError(UserError):
    """Model weights are neither local nor downloadable; the message says what to install."""
