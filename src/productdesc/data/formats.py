"""CSV, parquet and ``datasets`` inputs, read as the JSON lines the prepare engine parses.

A table's rows become JSON objects of the mapped columns (a null cell is left out, so the
row is dropped as ``missing_field``, as a JSON line without the key is), in blocks that go
through the same workers, counts, rejects and split as a JSON Lines file: the same records
give the same shards whatever the format. Rows are numbered from 1, the header not counted.

pyarrow reads CSV and parquet files; ``datasets`` (streaming) reads a directory or a Hub id.
Both are imported here only, when such an input is opened.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from productdesc.data.config import RECORD_FIELDS
from productdesc.errors import DataFormatError, UserError

__all__ = [
    "TABLE_FORMATS",
    "TableReader",
    "check_columns",
    "has_json_suffix",
    "open_dataset",
    "open_table",
    "table_format",
]

#: Formats read as tables, besides JSON Lines.
TABLE_FORMATS = ("csv", "parquet", "dataset")
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_JSON_SUFFIXES = (".json", ".jsonl", ".ndjson")
_PARQUET_MAGIC = b"PAR1"
_FILE_SUFFIXES = (*_SUFFIX_FORMATS, *_JSON_SUFFIXES, ".gz")
_PARQUET_BATCH = 8192
_DATASET_BATCH = 1000


def _suffix(path: Path) -> str:
    """The suffix that names the format: ``.csv`` of ``trn.csv.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def has_json_suffix(path: Path) -> bool:
    """Whether the name says JSON Lines: ``.json``, ``.jsonl``, ``.ndjson``, or a bare ``.gz``."""
    return _suffix(path) in _JSON_SUFFIXES or path.suffix.lower() == ".gz"


def looks_like_file(spec: str) -> bool:
    """Whether a missing input was meant as a file (a known suffix), not a ``datasets`` id."""
    return Path(spec).suffix.lower() in _FILE_SUFFIXES or spec.startswith((".", "/", "~"))


def table_format(path: Path, head: bytes) -> str | None:
    """``"parquet"`` or ``"csv"`` for a table file (from its magic bytes, or its name), else
    ``None``: the file is read as JSON Lines.

    Raises:
        DataFormatError: A file named ``.parquet`` that is not one.
    """
    if head.startswith(_PARQUET_MAGIC):
        return "parquet"
    fmt = _SUFFIX_FORMATS.get(_suffix(path))
    if fmt == "parquet":
        raise DataFormatError(
            f"{path} is named {_suffix(path)} but is not a parquet file (it does not start "
            f"with {_PARQUET_MAGIC.decode()})"
        )
    return fmt


def _is_text(kind: Any, integers: bool) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind)
        or pa.types.is_null(kind)
        or (integers and pa.types.is_integer(kind))
    )


def check_columns(
    what: str, names: list[str], fields: tuple[str, str, str], schema: Any = None
) -> list[str]:
    """The columns to read for ``fields`` (uid, title, content), in that order; a ``uid``
    column that is absent, and not asked for by name, is left out.

    Args:
        what: The input, for messages.
        names: Its columns.
        fields: :meth:`PrepareConfig.column_names <productdesc.PrepareConfig.column_names>`.
        schema: Its ``pyarrow.Schema``, to check the columns' types, if known.

    Raises:
        DataFormatError: A column is missing or holds no text.
    """
    selected = []
    for record_field, column in zip(RECORD_FIELDS, fields, strict=True):
        if column not in names:
            if record_field == "uid" and column == "uid":
                continue  # uid is optional, as in JSON Lines
            if column == record_field:
                cure = (
                    f": name the one to read as {record_field} with --columns {record_field}=COLUMN"
                )
                raise DataFormatError(
                    f"{what} has no column {column!r}; its columns: {_names(names)}{cure}"
                )
            raise DataFormatError(
                f"{what} has no column {column!r} (given for {record_field} in columns); its "
                f"columns: {_names(names)}"
            )
        if schema is not None:
            kind = schema.field(column).type
            if not _is_text(kind, integers=record_field == "uid"):
                read_as = f" (read as {record_field})" if column != record_field else ""
                raise DataFormatError(f"{what}: column {column!r}{read_as} holds {kind}, not text")
        selected.append(column)
    return selected


def _names(names: list[str]) -> str:
    return ", ".join(map(repr, names)) or "none"


def open_table(path: Path, fmt: str, compression: str, fields: tuple[str, str, str]) -> list[str]:
    """Check a CSV or parquet file's columns; returns those to read (see :func:`check_columns`).

    Raises:
        DataFormatError: The file cannot be read as ``fmt``, or lacks a column.
    """
    if fmt == "parquet":
        schema = _parquet(path).schema_arrow
    else:
        reader = _csv(path, compression, None)
        schema = reader.schema
        reader.close()
    return check_columns(str(path), schema.names, fields, schema)


def _parquet(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"{path} is not a readable parquet file: {exc}") from None


def _csv(path: Path, compression: str, columns: list[str] | None) -> Any:
    """A pyarrow CSV reader of ``columns`` (all when ``None``), read as text."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    delimiter = "\t" if _suffix(path) == ".tsv" else ","
    # Every column as text: type inference would read a uid as a number, or fail on a
    # column whose later rows do not fit the type its first block suggested.
    convert = pcsv.ConvertOptions(
        column_types=dict.fromkeys(columns or (), pa.string()),
        include_columns=columns or [],
    )
    try:
        stream = pa.input_stream(str(path), compression="gzip" if compression == "gzip" else None)
        return pcsv.open_csv(
            stream,
            parse_options=pcsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=convert,
        )
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(f"{path} is not a readable CSV file: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_dataset(spec: str, split: str | None, fields: tuple[str, str, str]) -> tuple[Any, str]:
    """A ``datasets`` input (a directory or a Hub id), streamed: ``(dataset, split)``.

    Raises:
        UserError: ``datasets`` cannot load ``spec``, or the split is not one of its.
        DataFormatError: It lacks a column, or a column holds no text.
    """
    import datasets

    is_dir = Path(spec).is_dir()
    try:
        loaded = datasets.load_dataset(spec, streaming=True)
    except Exception as exc:  # datasets raises many kinds: one line for all
        if is_dir:
            raise UserError(
                f"input {spec} is a directory that datasets cannot load ({_first_line(exc)}); "
                f"give a JSON Lines, CSV or parquet file, or a directory of them"
            ) from None
        raise UserError(
            f"input file not found: {spec}, and datasets cannot load it as a dataset "
            f"({_first_line(exc)})"
        ) from None
    splits = list(loaded)
    if split is None:
        if len(splits) != 1:
            raise UserError(
                f"{spec} has the splits {', '.join(splits)}: choose one with --dataset-split"
            )
        split = splits[0]
    elif split not in loaded:
        raise UserError(f"{spec} has no split {split!r}; its splits: {', '.join(splits)}")
    dataset = loaded[split]
    if dataset.features is not None:
        schema = dataset.features.arrow_schema
        check_columns(f"{spec} ({split})", schema.names, fields, schema)
    return dataset, split


class TableReader:
    """The rows of a table input as blocks of JSON lines, with the input's hash and size.

    For a file, :attr:`sha256` and :attr:`input_bytes` are the file's; for a dataset, whose
    files ``datasets`` resolves, they are those of the JSON lines read from it (its rows'
    mapped columns, in order): what identifies its content.

    Args:
        source: The input (:class:`~productdesc.data.reader.InputFile`, a table format).
        fields: :meth:`PrepareConfig.column_names <productdesc.PrepareConfig.column_names>`.
        chunk_bytes: About how many bytes of JSON lines a block holds.
        hash_input: Compute :attr:`sha256`.
    """

    def __init__(
        self, source: Any, fields: tuple[str, str, str], chunk_bytes: int, hash_input: bool
    ) -> None:
        self.source = source
        self.fields = fields
        self.chunk_bytes = chunk_bytes
        self.hash_input = hash_input
        self.sha256: str | None = None
        self.input_bytes = 0

    def blocks(self) -> Iterator[bytes]:
        """Blocks of whole JSON lines, one a row.

        Raises:
            DataFormatError: Reading failed part way (a malformed CSV row, a damaged file).
        """
        sha = hashlib.sha256() if self.hash_input and self.source.format == "dataset" else None
        rows = 0
        parts: list[bytes] = []
        size = 0
        try:
            for columns in self._batches():
                names = list(columns)
                for values in zip(*columns.values(), strict=True):
                    # A null (or pandas' NaN) is a missing cell: left out, as a missing key.
                    row = {
                        n: v for n, v in zip(names, values, strict=True) if v is not None and v == v
                    }
                    try:
                        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
                    except TypeError as exc:
                        raise DataFormatError(
                            f"{self.source.path} row {rows + 1:,}: {exc}; nothing was written"
                        ) from None
                    rows += 1
                    parts.append(line)
                    size += len(line)
                    if size >= self.chunk_bytes:
                        yield from self._emit(parts, sha)
                        parts, size = [], 0
        except DataFormatError:
            raise
        except Exception as exc:  # pyarrow's and datasets' errors, as one line
            raise DataFormatError(
                f"reading {self.source.path} failed after {rows:,} rows ({_first_line(exc)}); "
                f"nothing was written"
            ) from None
        if parts:
            yield from self._emit(parts, sha)
        if sha is not None:
            self.sha256 = sha.hexdigest()
        elif self.hash_input:
            self.sha256 = _file_sha256(self.source.path)
        if self.source.format != "dataset":
            self.input_bytes = self.source.path.stat().st_size

    def _emit(self, parts: list[bytes], sha: Any) -> Iterator[bytes]:
        block = b"".join(parts)
        if sha is not None:
            sha.update(block)
            self.input_bytes += len(block)
        yield block

    def _batches(self) -> Iterator[dict[str, list[Any]]]:
        """The rows, a batch at a time, as ``{column: values}`` of the columns to read."""
        source = self.source
        if source.format == "dataset":
            # Checked on the first batch too: a streamed dataset's features may be unknown
            # until its rows are read.
            columns: list[str] | None = None
            for batch in source.dataset.iter(batch_size=_DATASET_BATCH):
                if columns is None:
                    columns = check_columns(
                        f"{source.name} ({source.split})", list(batch), self.fields
                    )
                yield {c: batch[c] for c in columns}
            return
        if source.format == "parquet":
            parquet = _parquet(source.path)
            columns = check_columns(str(source.path), parquet.schema_arrow.names, self.fields)
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=columns):
                yield batch.to_pydict()
            return
        names = _csv(source.path, source.compression, None)
        columns = check_columns(str(source.path), names.schema.names, self.fields)
        names.close()
        reader = _csv(source.path, source.compression, columns)
        try:
            for batch in reader:
                yield batch.to_pydict()
        finally:
            reader.close()


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            sha.update(block)
    return sha.hexdigest()
