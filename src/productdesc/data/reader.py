"""Reading ``trn.json``: JSON Lines, plain or gzip, in chunks of whole lines.

Memory does not grow with the file: a plain file is cut into byte ranges that end at a line
end (each worker reads its own range), a gzip file is decompressed block by block. A line is
parsed into a record or a :class:`~productdesc.data.cleaning.Drop` with one of
:data:`READ_REASONS`; bad lines never stop a run.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal

import orjson
from attrs import frozen

from productdesc.data.cleaning import Drop, Record
from productdesc.errors import DataFormatError, UserError

__all__ = [
    "READ_REASONS",
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
_SNIFF_BYTES = 1 << 16
_OTHER_COMPRESSION = {
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"PK\x03\x04": "zip",
}
_CONVERT_HINT = (
    "convert it to JSON Lines, one object a line, e.g. `jq -c '.[]' {name} > {stem}.jsonl`"
)


@frozen
class InputFile:
    """An input file that passed the format checks.

    Attributes:
        path: The file.
        size: Its size in bytes (compressed size for gzip).
        compression: ``"none"`` or ``"gzip"`` (from the magic bytes, not the extension).
    """

    path: Path
    size: int
    compression: Literal["none", "gzip"]

    def open_text_stream(self) -> IO[bytes]:
        """The decompressed bytes of the file (for gzip input)."""
        return gzip.open(self.path, "rb")


def open_input(path: str | os.PathLike[str]) -> InputFile:
    """Check that ``path`` is a readable JSON Lines file, plain or gzip.

    Raises:
        UserError: Missing, a directory, or unreadable.
        DataFormatError: Another compression, a JSON array, or pretty-printed JSON.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"input file not found: {path}")
    if path.is_dir():
        raise UserError(f"input is a directory, not a file: {path}")
    try:
        with path.open("rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise UserError(f"cannot read input file {path}: {exc.strerror or exc}") from None
    for prefix, name in _OTHER_COMPRESSION.items():
        if magic.startswith(prefix):
            raise DataFormatError(
                f"{path} is {name}-compressed; only plain and gzip JSON Lines are read: "
                f"decompress it first"
            )
    compression: Literal["none", "gzip"] = "gzip" if magic.startswith(b"\x1f\x8b") else "none"
    info = InputFile(path, path.stat().st_size, compression)
    _sniff(info)
    return info


def _sniff(info: InputFile) -> None:
    """Reject the whole-file JSON shapes that would otherwise be millions of bad lines."""
    try:
        if info.compression == "gzip":
            with info.open_text_stream() as fh:
                head = fh.read(_SNIFF_BYTES)
        else:
            with info.path.open("rb") as fh:
                head = fh.read(_SNIFF_BYTES)
    except (EOFError, OSError, gzip.BadGzipFile):
        return  # a corrupt or truncated stream is reported, with a line count, by the run
    head = head.removeprefix(BOM).lstrip()
    first_line = head.split(b"\n", 1)[0].strip()
    name, stem = info.path.name, info.path.name.split(".")[0]
    if head.startswith(b"["):
        try:
            value = orjson.loads(first_line)
        except orjson.JSONDecodeError:
            value = None  # an array spread over lines
        if not isinstance(value, list) or any(isinstance(item, dict) for item in value):
            raise DataFormatError(
                f"{info.path} is a JSON array, not JSON Lines; "
                + _CONVERT_HINT.format(name=name, stem=stem)
            )
    if first_line == b"{":
        raise DataFormatError(
            f"{info.path} is pretty-printed JSON, not JSON Lines (one object a line); "
            f"convert it, e.g. `jq -c '.' {name} > {stem}.jsonl`"
        )


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


def parse_line(raw: bytes) -> Record | Drop:
    """One line (without its ``\\n``) as a record ``{uid, title, content}`` or a :class:`Drop`.

    ``title`` and ``content`` must be strings; ``uid`` may be a string, an integer (kept as
    text), ``null`` or absent. Other fields (``target_ind``, ``target_rel``) are not kept.
    A trailing ``\\r`` (CRLF files) and a leading UTF-8 byte order mark are ignored.
    """
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _parse_failure(raw, exc)
    if type(obj) is not dict:
        return Drop("not_an_object", f"a JSON {_type_name(obj)}")
    try:
        title = obj["title"]
        content = obj["content"]
    except KeyError as exc:
        return Drop("missing_field", f"no {exc.args[0]!r} field")
    if type(title) is not str or type(content) is not str:
        bad = "title" if type(title) is not str else "content"
        return Drop("wrong_type", f"{bad} is a {_type_name(obj[bad])}, not a string")
    uid = obj.get("uid")
    if uid is not None and type(uid) is not str:
        if type(uid) is not int:
            return Drop("wrong_type", f"uid is a {_type_name(uid)}, not a string")
        uid = str(uid)
    return {"uid": uid, "title": title, "content": content}


def _parse_failure(raw: bytes, exc: Exception) -> Record | Drop:
    # Only bad lines come here, so the extra checks cost nothing on good input.
    if raw.startswith(BOM):  # first line of a file, or of a file concatenated to another one
        return parse_line(raw[len(BOM) :])
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
