"""``AmazonTitlesDataset``: the streaming cleaner and sharder for ``trn.json``.

::

    from productdesc import AmazonTitlesDataset, PrepareConfig

    ds = AmazonTitlesDataset("trn.json", PrepareConfig(keep_chars="-'&%/"))
    manifest = ds.prepare("data/prepared")          # shards + manifest.json + rejects.jsonl
    prepared = AmazonTitlesDataset.from_prepared("data/prepared")
    for record in prepared.iter_split("train"):     # {"uid", "title", "content"}
        ...
    train = prepared.to_hf_dataset("train")         # datasets.Dataset over the shards
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from productdesc.data.cleaning import Record
from productdesc.data.config import PrepareConfig
from productdesc.data.manifest import Manifest
from productdesc.data.reader import InputFile, open_input
from productdesc.data.runner import Run
from productdesc.data.writer import write_prepared
from productdesc.errors import DataFormatError, UserError

__all__ = ["AmazonTitlesDataset", "PrepareConfig", "PreparedDataset", "sample_path"]


def sample_path() -> Path:
    """The ``trn.json`` sample shipped in the package: 120 hand-written records in the
    dump's exact format, with HTML entities (some double-escaped), duplicates and empty
    descriptions, so that a prepare of it shows every cleaning step at work."""
    return Path(__file__).parent / "sample" / "trn_sample.jsonl"


class AmazonTitlesDataset:
    """A ``trn.json`` file (JSON Lines, plain or gzip), or a table of the same records, and
    how to clean it.

    Args:
        path: The input: a JSON Lines file, a CSV (``.csv``, ``.tsv``, plain or ``.gz``) or
            parquet file, or a directory or Hub id that ``datasets.load_dataset`` reads.
            ``config.columns`` names the columns read as ``title``/``content``/``uid``.
        config: Cleaning, split and output options (:class:`PrepareConfig`).
        split: The split of a dataset to read (its only one when ``None``).

    Raises:
        UserError: The file is missing or unreadable, or ``datasets`` cannot load it.
        DataFormatError: The file is not JSON Lines (e.g. a JSON array: the message says how
            to convert it), its format cannot be told, or a table lacks a column.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: PrepareConfig | None = None,
        *,
        split: str | None = None,
    ) -> None:
        if config is not None and not isinstance(config, PrepareConfig):
            raise TypeError(f"config must be a PrepareConfig, got {type(config).__name__}")
        self.config = config if config is not None else PrepareConfig()
        self.source: InputFile = open_input(path, self.config.column_names(), split)

    @property
    def path(self) -> Path:
        return self.source.path

    def __repr__(self) -> str:
        return f"AmazonTitlesDataset({str(self.path)!r}, config={self.config!r})"

    @classmethod
    def sample(cls, config: PrepareConfig | None = None) -> AmazonTitlesDataset:
        """The small ``trn.json`` sample shipped in the package (see :func:`sample_path`)."""
        return cls(sample_path(), config)

    def __iter__(self) -> Iterator[Record]:
        """Cleaned, deduplicated records ``{"uid", "title", "content"}`` in input order.

        Runs the whole pipeline (with ``config.workers`` processes); nothing is written.
        """
        for kept in Run(self.source, self.config, hash_input=False):
            for _, line in kept.in_order():
                yield orjson.loads(line)

    def prepare(self, out_dir: str | os.PathLike[str], progress: bool = True) -> Manifest:
        """Clean, split and shard the input into ``out_dir``.

        ``out_dir`` gets ``train-00000.jsonl`` ... (and ``validation-``, ``test-``),
        ``rejects.jsonl`` and, written last, ``manifest.json``. Re-running with the same
        input and config rewrites the same bytes.

        ``rejects.jsonl`` holds the first ``config.rejects_per_reason`` dropped lines of each
        reason, by line number: ``{"line", "reason", "detail", "raw"}`` with the input line,
        or, for duplicates, ``{"line", "reason", "detail", "record"}`` with the cleaned record.

        Args:
            out_dir: A new or empty directory, or one holding a prepare of the same input
                and config (it is refreshed).
            progress: Show a progress bar with records/s on stderr.

        Returns:
            The manifest: counts by reason, shards, input hash.

        Raises:
            OutputDirError: ``out_dir`` is unusable or holds a prepare of another config or
                input; nothing is changed.
            DataFormatError: The input is truncated or corrupt (gzip); nothing is written.
        """
        return write_prepared(self.source, self.config, out_dir, progress)

    @staticmethod
    def from_prepared(out_dir: str | os.PathLike[str]) -> PreparedDataset:
        """Open a directory written by :meth:`prepare`.

        Raises:
            UserError: No ``manifest.json`` there, or a shard it lists is missing.
        """
        return PreparedDataset(out_dir)


class PreparedDataset:
    """A prepared directory: its :class:`Manifest` and its shards by split.

    Args:
        directory: A directory written by :meth:`AmazonTitlesDataset.prepare`.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.manifest = Manifest.load(self.directory)
        for split in self.manifest.splits:
            for path in self.shard_paths(split):
                if not path.is_file():
                    raise UserError(
                        f"{path} is listed in {self.directory}/manifest.json but missing; "
                        f"prepare again"
                    )

    def __repr__(self) -> str:
        rows = ", ".join(f"{k}={v.rows}" for k, v in self.manifest.splits.items())
        return f"PreparedDataset({str(self.directory)!r}, {rows})"

    @property
    def splits(self) -> dict[str, int]:
        """Split name -> number of records."""
        return {name: info.rows for name, info in self.manifest.splits.items()}

    def shard_paths(self, split: str) -> list[Path]:
        """Paths of ``split``'s shards, in order."""
        return [self.directory / name for name in self.manifest.shard_names(split)]

    def iter_split(self, split: str) -> Iterator[Record]:
        """Records ``{"uid", "title", "content"}`` of ``split``, in shard order."""
        for path in self.shard_paths(split):
            with path.open("rb") as fh:
                for line in fh:
                    yield orjson.loads(line)

    def verify(self) -> None:
        """Check every shard's size and SHA-256 against the manifest.

        Raises:
            DataFormatError: A shard differs (edited, truncated or replaced).
        """
        for split in self.manifest.splits.values():
            for shard in split.shards:
                path = self.directory / shard.name
                sha = hashlib.sha256()
                with path.open("rb") as fh:
                    while block := fh.read(1 << 20):
                        sha.update(block)
                if path.stat().st_size != shard.bytes or sha.hexdigest() != shard.sha256:
                    raise DataFormatError(f"{path} differs from the manifest; prepare again")

    def to_hf_dataset(self, split: str, streaming: bool = False, **kwargs: Any) -> Any:
        """``split`` as a ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``).

        Loaded with ``datasets.load_dataset("json", ...)`` over the shards, so rows keep the
        shard order. Keyword arguments go to ``load_dataset`` (e.g. ``cache_dir``).
        """
        import datasets

        paths = self.shard_paths(split)
        text = datasets.Value("string")
        features = datasets.Features({"uid": text, "title": text, "content": text})
        if not paths:
            if streaming:
                return datasets.IterableDataset.from_generator(_no_rows, features=features)
            return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
        with paths[0].open("rb") as fh:
            first = orjson.loads(fh.readline())
        if set(first) != set(features):
            features = None  # a plugin step added fields: let datasets infer their types
        return datasets.load_dataset(
            "json",
            data_files=[str(p) for p in paths],
            split="train",
            features=features,
            streaming=streaming,
            **kwargs,
        )


def _no_rows() -> Iterator[Record]:
    yield from ()
