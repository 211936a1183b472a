"""Reading ``trn.json``: JSON Lines, plain or gzip, in chunks of whole lines.

(CSV, parquet and ``datasets`` inputs are opened here too, and read by
:mod:`~productdesc.data.formats` as JSON lines.)

Memory does not grow with the file: a plain file is cut into byte ranges that end at a line
end (each worker reads its own range); a gzip file or a stream (pipe, FIFO, ``/dev/stdin``)
is read, and decompressed, block by block, through the one handle its checks read. A line is
parsed into a record or a :class:`~productdesc.data.cleaning.Drop` with one of
:data:`READ_REASONS`; bad lines never stop a run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

import orjson
from attrs import field, frozen

from productdesc.data import formats
from productdesc.data.cleaning import Drop, Record
from productdesc.data.config import RECORD_FIELDS
from productdesc.errors import DataFormatError, UserError

__all__ = [
    "READ_REASONS",
    "UNREADABLE_REASONS",
    "HashingReader",
    "InputFile",
    "TruncatedStream",
    "byte_ranges",
    "open_input",
    "parse_line",
    "split_lines",
    "stream_blocks",
]

BOM = b"\xef\xbb\xbf"
READ_REASONS = (
    "blank_line",
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
)
#: The read reasons of lines that are no record at all (a blank line is only spacing):
#: ``prepare`` fails when more than ``max_unreadable`` of the lines are such.
UNREADABLE_REASONS = READ_REASONS[1:]
_SNIFF_BYTES = 1 << 16
_OTHER_COMPRESSION = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
# UTF-32 first: its little-endian mark starts with UTF-16's. With the mark, iconv finds the
# byte order itself (and drops the mark).
_OTHER_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
# Share of NUL or invalid UTF-8 bytes in the head above which a file is not text. Lower
# shares are a few damaged lines (or another 8-bit encoding), counted line by line.
_BINARY_SHARE = 0.1


class _Once:
    """A stream's bytes (pipe, FIFO, ``/dev/stdin``), readable once: the head read to check
    the format, then the rest, from the one open file."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self._head = head
        self._fh: IO[bytes] | None = fh

    def take(self, path: Path) -> _Prefixed:
        if self._fh is None:
            raise UserError(
                f"{path} is a stream (a pipe or FIFO) and was read already; save it to a "
                f"file to read it twice"
            )
        fh, self._fh = self._fh, None
        return _Prefixed(self._head, fh)


class _Prefixed:
    """A binary file whose first bytes were read already: those bytes, then the rest."""

    def __init__(self, head: bytes, fh: IO[bytes]) -> None:
        self._head = head
        self._fh = fh

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._fh.read(size)
        if size < 0:
            data, self._head = self._head + self._fh.read(), b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> _Prefixed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@frozen
class InputFile:
    """An input that passed the format checks.

    Attributes:
        path: The file (for a ``datasets`` id, the id as a path).
        size: Its size in bytes (compressed size for gzip); ``None`` for a stream (a pipe,
            FIFO or ``/dev/stdin``), whose size is known once it is read, and a dataset.
        compression: ``"none"`` or ``"gzip"`` (from the magic bytes, not the extension).
        format: ``"jsonl"``, or a table read by :mod:`~productdesc.data.formats`:
            ``"csv"``, ``"parquet"`` or ``"dataset"`` (a directory or Hub id that
            ``datasets.load_dataset`` reads).
        split: The dataset's split read; ``None`` for a file.
        spec: What was given for a dataset (its id or directory); ``None`` for a file.
    """

    path: Path
    size: int | None
    compression: Literal["none", "gzip"]
    format: Literal["jsonl", "csv", "parquet", "dataset"] = "jsonl"
    split: str | None = None
    spec: str | None = None
    _stream: _Once | None = field(default=None, eq=False, repr=False)
    dataset: Any = field(default=None, eq=False, repr=False)

    @property
    def name(self) -> str:
        """What the manifest records: the file's name (not its path), or a dataset's id (a
        directory's name)."""
        if self.spec is not None and not Path(self.spec).is_dir():
            return self.spec
        return self.path.name

    @property
    def is_stream(self) -> bool:
        """Whether the input is a stream, which can be read only once."""
        return self._stream is not None

    def open_raw(self) -> IO[bytes]:
        """The file's bytes from the start (compressed, for gzip): a new handle on a regular
        file, the one pass over a stream.

        Raises:
            UserError: A stream that was read already.
        """
        if self._stream is None:
            return self.path.open("rb")
        return self._stream.take(self.path)


def open_input(
    path: str | os.PathLike[str],
    fields: tuple[str, str, str] = RECORD_FIELDS,
    split: str | None = None,
) -> InputFile:
    """Check that ``path`` is an input ``prepare`` reads: a JSON Lines file (plain or gzip,
    a file or a stream), a CSV or parquet file, or a directory or Hub id that ``datasets``
    loads (only those have a ``split``).

    The file is opened once: a stream (``zcat trn.json.gz | productdesc prepare /dev/stdin``,
    ``<(...)``, a FIFO) keeps that handle, and its head is replayed to the run. Parquet is
    told by its magic bytes, CSV by its name (``.csv``, ``.tsv``, plain or ``.gz``).

    Args:
        path: The input.
        fields: The columns read as uid, title and content
            (:meth:`PrepareConfig.column_names <productdesc.PrepareConfig.column_names>`):
            a table lacking one fails here.
        split: The split of a dataset; its only one when ``None``.

    Raises:
        UserError: Missing, unreadable, or a dataset ``datasets`` cannot load.
        DataFormatError: Empty, binary, UTF-16/32, another compression, a JSON array,
            pretty-printed JSON, a format that cannot be told, or a table without a column.
    """
    spec = os.fspath(path)
    path = Path(path)
    if not path.exists():
        if formats.looks_like_file(spec):
            raise UserError(f"input file not found: {path}")
        return _dataset(spec, fields, split)
    if path.is_dir():
        return _dataset(spec, fields, split)
    with contextlib.ExitStack() as stack:
        try:
            fh = stack.enter_context(path.open("rb"))
            mode = os.fstat(fh.fileno()).st_mode
            head = fh.read(_SNIFF_BYTES)
        except OSError as exc:
            raise UserError(f"cannot read input file {path}: {exc.strerror or exc}") from None
        stream = not stat.S_ISREG(mode)
        table = None if stream else formats.table_format(path, head)
        if split is not None:
            raise UserError(f"{path} is a file: a split is chosen only in a dataset")
        if table is not None:
            compression: Literal["none", "gzip"] = (
                "gzip" if head.startswith(b"\x1f\x8b") else "none"
            )
            formats.open_table(path, table, compression, fields)
            return InputFile(path, os.fstat(fh.fileno()).st_size, compression, table)
        compression = _check_head(path, head, stream)
        if stream:
            stack.pop_all()
            return InputFile(path, None, compression, stream=_Once(head, fh))
        size = os.fstat(fh.fileno()).st_size
    return InputFile(path, size, compression)


def _dataset(spec: str, fields: tuple[str, str, str], split: str | None) -> InputFile:
    dataset, split = formats.open_dataset(spec, split, fields)
    return InputFile(Path(spec), None, "none", "dataset", split, spec, dataset=dataset)


def _check_head(path: Path, head: bytes, stream: bool) -> Literal["none", "gzip"]:
    """The compression of a file that starts with ``head``; raises for what is not JSON Lines."""
    for prefix, name in _OTHER_COMPRESSION.items():
        if head.startswith(prefix):
            raise DataFormatError(
                f"{path} is {name}-compressed; only plain and gzip JSON Lines are read: "
                f"decompress it first"
            )
    if head.startswith(b"\x1f\x8b"):
        text = _gunzip_head(head)
        if text is not None:  # else damaged: reported, with a line count, by the run
            _sniff(path, text, "gzip", stream)
        return "gzip"
    _sniff(path, head, "none", stream)
    return "none"


def _gunzip_head(head: bytes) -> bytes | None:
    """The first decompressed bytes of a gzip file's ``head``; ``None`` if it is damaged."""
    decompressor = zlib.decompressobj(wbits=31)
    try:
        text = decompressor.decompress(head, _SNIFF_BYTES)
    except zlib.error:
        return None
    if not text and not decompressor.eof:
        return None  # cut short inside the header or the first block
    return text


def _sniff(path: Path, head: bytes, compression: str, stream: bool) -> None:
    """Reject inputs that would otherwise be 0 records or millions of bad lines."""
    if not head:
        inside = " (a gzip file of nothing)" if compression == "gzip" else ""
        raise DataFormatError(f"{path} is empty{inside}: there are no records to prepare")
    for bom, encoding in _OTHER_BOMS.items():
        if head.startswith(bom):
            raise DataFormatError(_not_utf8(path, encoding, compression, stream))
    bad = head.count(0) + len(head) - len(head.decode("utf-8", "ignore").encode("utf-8"))
    if bad > _BINARY_SHARE * len(head):
        half = len(head) // 2
        if head[1::2].count(0) > half * 0.3 or head[0::2].count(0) > half * 0.3:
            encoding = "UTF-16LE" if head[1::2].count(0) > head[0::2].count(0) else "UTF-16BE"
            raise DataFormatError(_not_utf8(path, encoding, compression, stream))
        raise DataFormatError(
            f"{path} is a binary file, not JSON Lines text ({bad:,} of its first "
            f"{len(head):,} bytes are NUL or not UTF-8)"
        )
    head = head.removeprefix(BOM).lstrip()
    first_line = head.split(b"\n", 1)[0].strip()
    if head.startswith(b"["):
        try:
            value = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            value = None  # an array spread over lines
        if not isinstance(value, list) or any(isinstance(item, dict) for item in value):
            hint = _rewrite(path, compression, stream, "jq -c '.[]'")
            raise DataFormatError(
                f"{path} is a JSON array, not JSON Lines; convert it to JSON Lines, one "
                f"object a line, e.g. {hint}"
            )
    if first_line == b"{":
        hint = _rewrite(path, compression, stream, "jq -c '.'")
        raise DataFormatError(
            f"{path} is pretty-printed JSON, not JSON Lines (one object a line); convert "
            f"it, e.g. {hint}"
        )
    # A name that says JSON keeps today's line-by-line counting of a damaged file; any other
    # name with no object first is a format we would only misread.
    if not stream and not first_line.startswith(b"{") and not formats.has_json_suffix(path):
        raise DataFormatError(
            f"cannot tell the format of {path}: its first line is no JSON object "
            f"({first_line[:40].decode('utf-8', 'replace')!r}...) and its name ends in none of "
            f".jsonl, .json, .csv, .tsv, .parquet; rename it after its format"
        )


def _not_utf8(path: Path, encoding: str, compression: str, stream: bool) -> str:
    command = f"iconv -f {encoding} -t UTF-8"
    return (
        f"{path} is {encoding} text; JSON Lines must be UTF-8: convert it, e.g. "
        f"{_rewrite(path, compression, stream, command)}"
    )


def _rewrite(path: Path, compression: str, stream: bool, command: str) -> str:
    """A shell line that pipes the input through ``command`` into a new file: never the
    input's own name, which the shell would empty before ``command`` reads it."""
    name = path.name
    stem = name.split(".")[0] or "trn"
    target = f"{stem}.jsonl" if f"{stem}.jsonl" != name else f"{stem}.lines.jsonl"
    if stream:
        source = "... | zcat | " if compression == "gzip" else "... | "
        return f"`{source}{command} > {target}`"
    if compression == "gzip":
        return f"`zcat {name} | {command} > {target}`"
    return f"`{command} {name} > {target}`"


def _type_name(value: object) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        int: "number",
        float: "number",
        bool: "boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def parse_line(raw: bytes, fields: tuple[str, str, str] = RECORD_FIELDS) -> Record | Drop:
    """One line (without its ``\\n``) as a record ``{uid, title, content}`` or a :class:`Drop`.

    ``title`` and ``content`` must be strings; ``uid`` may be a string, an integer (kept as
    text), ``null`` or absent. Other fields (``target_ind``, ``target_rel``) are not kept.
    A trailing ``\\r`` (CRLF files) and a leading UTF-8 byte order mark are ignored.

    Args:
        raw: The line.
        fields: The keys read as ``uid``, ``title`` and ``content``
            (:meth:`PrepareConfig.column_names <productdesc.PrepareConfig.column_names>`);
            the messages of a drop name these keys.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _parse_failure(raw, exc, fields)
    if type(obj) is not dict:
        return Drop("not_an_object", f"a JSON {_type_name(obj)}")
    uid_key, title_key, content_key = fields
    try:
        title = obj[title_key]
        content = obj[content_key]
    except KeyError as exc:
        return Drop("missing_field", f"no {exc.args[0]!r} field")
    if type(title) is not str or type(content) is not str:
        bad = title_key if type(title) is not str else content_key
        return Drop("wrong_type", f"{bad} is a {_type_name(obj[bad])}, not a string")
    uid = obj.get(uid_key)
    if uid is not None and type(uid) is not str:
        if type(uid) is not int:
            return Drop("wrong_type", f"{uid_key} is a {_type_name(uid)}, not a string")
        uid = str(uid)
    return {"uid": uid, "title": title, "content": content}


def _parse_failure(raw: bytes, exc: Exception, fields: tuple[str, str, str]) -> Record | Drop:
    # Only bad lines come here, so the extra checks cost nothing on good input.
    if raw.startswith(BOM):  # first line of a file, or of a file concatenated to another one
        return parse_line(raw[len(BOM) :], fields)
    if not raw.strip():
        return Drop("blank_line")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Drop("invalid_utf8", f"byte {err.start}: {err.reason}")
    return Drop("malformed_json", str(exc))


def split_lines(data: bytes) -> list[bytes]:
    """``data`` cut at ``\\n``; a final line needs no ``\\n``. ``\\r\\n`` is left to the parser."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def byte_ranges(path: Path, size: int, chunk_bytes: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` ranges of about ``chunk_bytes`` that cover the file in whole lines."""
    with path.open("rb") as fh:
        start = 0
        while start < size:
            end = start + chunk_bytes
            if end >= size:
                yield start, size
                return
            fh.seek(end)
            while True:  # extend to the end of the line that crosses `end`
                block = fh.read(1 << 16)
                if not block:
                    end = size
                    break
                newline = block.find(b"\n")
                if newline >= 0:
                    end += newline + 1
                    break
                end += len(block)
            yield start, end
            start = end


class TruncatedStream(Exception):
    """A compressed stream ended early; ``lines`` complete lines were read before."""

    def __init__(self, lines: int, cause: BaseException) -> None:
        super().__init__(f"{cause} after {lines} lines")
        self.lines = lines
        self.cause = cause


def stream_blocks(stream: IO[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of whole lines, about ``chunk_bytes`` each, from a (gzip) byte stream.

    Raises:
        TruncatedStream: The stream is truncated or corrupt; it has the number of complete
            lines decompressed before the damage.
    """
    read = getattr(stream, "read1", stream.read)  # read1: no data lost before an error
    parts: list[bytes] = []
    size = lines = 0
    while True:
        try:
            block = read(1 << 20)
        except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise TruncatedStream(lines + sum(p.count(b"\n") for p in parts), exc) from None
        if not block:  # end of stream: the last line needs no newline
            if size:
                yield b"".join(parts)
            return
        parts.append(block)
        size += len(block)
        if size < chunk_bytes:
            continue
        data = b"".join(parts)
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # a line longer than a block: keep reading
            parts = [data]
            continue
        lines += data.count(b"\n", 0, cut)
        yield data[:cut]
        parts, size = [data[cut:]], len(data) - cut


class HashingReader:
    """A binary file wrapper that hashes (SHA-256) and counts the bytes read through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.sha256.update(data)
        self.bytes_read += len(data)
        return data
