"""``manifest.json``: what a prepared directory holds and how it was made.

Written last, atomically, by ``prepare``: a directory without a manifest is not a finished
prepare. The manifest has no timestamps, so the same input and config give the same bytes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import orjson
from attrs import field, frozen

from productdesc._io import write_text_atomic
from productdesc.errors import UserError

__all__ = ["MANIFEST_NAME", "PUBLISHING_NAME", "FileInfo", "InputInfo", "Manifest", "SplitInfo"]

MANIFEST_NAME = "manifest.json"
# Where a prepare run's new files wait to be moved into the directory (see the writer).
PUBLISHING_NAME = ".publishing"
FORMAT = "productdesc-prepared/1"


@frozen
class FileInfo:
    """One output file: a shard or the rejects file."""

    name: str
    rows: int
    bytes: int
    sha256: str


@frozen
class SplitInfo:
    """One split: its record count and shards, in order."""

    rows: int
    shards: tuple[FileInfo, ...] = field(
        converter=lambda shards: tuple(
            s if isinstance(s, FileInfo) else FileInfo(**s) for s in shards
        )
    )


@frozen
class InputInfo:
    """The input file: its name (not its path), size in bytes, SHA-256 and compression.

    A table input has its ``format`` (``csv``, ``parquet``; ``None``, not written, for JSON
    Lines). A ``dataset`` (a directory or Hub id ``datasets`` loads) has its id (or its
    directory's name), the ``split`` read, and the size and SHA-256 of its rows as read:
    JSON lines of the mapped columns, in order.
    """

    name: str
    size: int
    sha256: str
    compression: str
    format: str | None = None
    split: str | None = None


def _splits(value: dict[str, Any]) -> dict[str, SplitInfo]:
    return {k: s if isinstance(s, SplitInfo) else SplitInfo(**s) for k, s in value.items()}


@frozen(kw_only=True)
class Manifest:
    """The manifest of a prepared directory.

    Attributes:
        input: The input file (:class:`InputInfo`).
        config: :meth:`PrepareConfig.to_dict <productdesc.PrepareConfig.to_dict>` of the run.
        lines: Input lines read; ``lines == kept + sum(dropped.values())``.
        kept: Records written to the shards.
        dropped: Dropped lines by reason (``duplicate``, ``empty_content`` ...).
        splits: ``train``/``validation``/``test`` -> :class:`SplitInfo`.
        rejects: The rejects file (first dropped lines of each reason), if any line was dropped.
        productdesc_version: The version that wrote it.
    """

    input: InputInfo = field(converter=lambda x: x if isinstance(x, InputInfo) else InputInfo(**x))
    config: dict[str, Any]
    lines: int
    kept: int
    dropped: dict[str, int]
    splits: dict[str, SplitInfo] = field(converter=_splits)
    rejects: FileInfo | None = field(
        default=None, converter=lambda x: FileInfo(**x) if isinstance(x, dict) else x
    )
    productdesc_version: str = ""
    format: str = FORMAT

    @property
    def counts(self) -> dict[str, int]:
        """``{"kept": n, <reason>: n, ...}``: every input line counted once."""
        return {"kept": self.kept, **self.dropped}

    def shard_names(self, split: str) -> list[str]:
        """File names of ``split``'s shards, in order (``[]`` for an empty split).

        Raises:
            UserError: ``split`` is not in this manifest.
        """
        try:
            return [s.name for s in self.splits[split].shards]
        except KeyError:
            known = ", ".join(self.splits)
            raise UserError(f"no split {split!r} in this prepared data; known: {known}") from None

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        # Left out when unset, so that a JSON Lines input's manifest is as it always was.
        for key in ("format", "split"):
            if data["input"][key] is None:
                del data["input"][key]
        return data

    def to_json(self) -> str:
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``manifest.json`` into ``directory`` atomically; returns its path."""
        path = Path(directory) / MANIFEST_NAME
        write_text_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Manifest:
        """Read ``directory/manifest.json``.

        Raises:
            UserError: No manifest, or one this version cannot read.
        """
        path = Path(directory) / MANIFEST_NAME
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            if (Path(directory) / PUBLISHING_NAME).is_dir():
                raise UserError(
                    f"{directory} holds no finished prepare: one was interrupted while "
                    f"publishing; run the same `productdesc prepare` into it again to finish"
                ) from None
            raise UserError(
                f"{directory} holds no prepared data (no {MANIFEST_NAME}); "
                f"run `productdesc prepare INPUT --out {directory}` first"
            ) from None
        except orjson.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise UserError(f"{path}: unknown manifest format {found!r} (expected {FORMAT!r})")
        try:
            manifest = cls(**data)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path} is damaged: {exc}") from None
        _check_file_names(manifest, Path(directory), path)
        return manifest


def _check_file_names(manifest: Manifest, directory: Path, path: Path) -> None:
    """Refuse an entry that would make a reader, or a rerun's clean-up, reach outside
    ``directory``: a path instead of a file name, or a symbolic link that leads out."""
    entries = [
        (f"splits.{split}.shards[{i}]", shard.name)
        for split, info in manifest.splits.items()
        for i, shard in enumerate(info.shards)
    ]
    if manifest.rejects is not None:
        entries.append(("rejects", manifest.rejects.name))
    root = directory.resolve()
    for where, name in entries:
        if not _is_plain_name(name):
            raise UserError(
                f"{path}: {where} is {name!r}, not a file name inside {directory}; the "
                f"manifest was edited or damaged: prepare again into a new directory"
            )
        target = directory / name
        if target.is_symlink() and target.resolve().parent != root:
            raise UserError(
                f"{path}: {where} {name!r} is a symbolic link out of {directory} (to "
                f"{os.readlink(target)}): refusing to follow it; prepare again into a new "
                f"directory"
            )


def _is_plain_name(name: str) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not os.path.isabs(name)
        and not any(c in name for c in "/\\\0")
    )
