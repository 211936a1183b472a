"""Reading trn.json: every kind of bad line, counted once, with exact survivors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import orjson
import pytest

from productdesc import AmazonTitlesDataset, PrepareConfig
from productdesc.data.reader import byte_ranges, parse_line
from productdesc.errors import DataFormatError, UserError


def line(**fields: object) -> bytes:
    return json.dumps({"target_ind": [1, 2], "target_rel": [1.0, 1.0], **fields}).encode()


# (raw line, reason or None for kept); the file is written with a BOM and mixed line ends.
HOSTILE: list[tuple[bytes, str | None]] = [
    (line(uid="g1", title="Girls Ballet Tutu", content="High quality 3 layer tutu."), None),
    (
        line(uid="g2", title="Caf&eacute; &amp;quot;Mug&amp;quot;", content="Holds 12&nbsp;oz."),
        None,
    ),
    (b'{"uid": "bad1", "title": "broken", "content": "no end', "malformed_json"),
    (b"not json at all", "malformed_json"),
    (b'{"uid": "s", "title": "lone \\ud800 surrogate", "content": "x"}', "malformed_json"),
    (b'{"uid": "u", "title": "bad \xff\xfe bytes", "content": "x"}', "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"42", "not_an_object"),
    (b"null", "not_an_object"),
    (line(uid="m1", title="no content"), "missing_field"),
    (b'{"uid": "m2", "content": "no title"}', "missing_field"),
    (line(uid="w1", title=5, content="number title"), "wrong_type"),
    (line(uid="w2", title="null content", content=None), "wrong_type"),
    (line(uid=["x"], title="list uid", content="c"), "wrong_type"),
    (b"", "blank_line"),
    (b"   \t ", "blank_line"),
    (line(uid="e1", title="\u2605\u2606", content="only stars in the title"), "empty_title"),
    (line(uid="e2", title="Empty content", content=""), "empty_content"),
    (line(uid="e3", title="Entity only", content="&nbsp; &#x2605;"), "empty_content"),
    (line(uid="d1", title="girls  BALLET tutu", content="high quality 3 layer TUTU."), "duplicate"),
    (line(uid="d2", title="Caf&#233; &quot;mug&quot;", content="holds 12 oz."), "duplicate"),
    (line(uid=123, title="Numeric uid", content="kept, uid as text"), None),
    (line(uid=None, title="Null uid", content="kept too"), None),
    (line(title="No uid", content="Na\u00efve cr\u00e8me, \u00fcber gut."), None),
]
SURVIVORS = [
    {"uid": "g1", "title": "Girls Ballet Tutu", "content": "High quality 3 layer tutu."},
    {"uid": "g2", "title": "Café Mug", "content": "Holds 12 oz."},
    {"uid": "123", "title": "Numeric uid", "content": "kept, uid as text"},
    {"uid": None, "title": "Null uid", "content": "kept too"},
    {"uid": None, "title": "No uid", "content": "Naïve crème, über gut."},
]


def write_hostile(path: Path) -> Path:
    ends = [b"\r\n" if i % 3 == 0 else b"\n" for i in range(len(HOSTILE))]
    body = b"".join(raw + end for (raw, _), end in zip(HOSTILE, ends, strict=True))
    path.write_bytes(b"\xef\xbb\xbf" + body.rstrip(b"\n"))  # BOM; no newline at the end
    return path


def expected_counts() -> dict[str, int]:
    counts: dict[str, int] = {}
    for _, reason in HOSTILE:
        if reason:
            counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_input_exact_survivors_and_counts(tmp_path: Path, workers: int) -> None:
    src = write_hostile(tmp_path / "trn.json")
    # tiny chunks: every chunk boundary case is exercised, with the same result
    config = PrepareConfig(workers=workers, chunk_bytes=200, shard_size=2, split="1/0/0")
    manifest = AmazonTitlesDataset(src, config).prepare(tmp_path / "out", progress=False)

    assert manifest.lines == len(HOSTILE)
    assert manifest.kept == len(SURVIVORS)
    assert manifest.dropped == expected_counts()
    assert sum(manifest.counts.values()) == manifest.lines
    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    assert list(prepared.iter_split("train")) == SURVIVORS
    assert [s.rows for s in manifest.splits["train"].shards] == [2, 2, 1]

    rejects = [
        orjson.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()
    ]
    expected = [(n, r) for n, (_, r) in enumerate(HOSTILE, start=1) if r]
    assert [(r["line"], r["reason"]) for r in rejects] == expected
    by_line = {r["line"]: r for r in rejects}
    assert by_line[4]["raw"] == "not json at all"
    assert by_line[6]["raw"] == '{"uid": "u", "title": "bad \\xff\\xfe bytes", "content": "x"}'
    assert by_line[21]["record"]["uid"] == "d1" and "earlier record" in by_line[21]["detail"]
    assert by_line[11]["detail"] == "no 'content' field"
    assert by_line[14]["detail"] == "content is a null, not a string"


def test_iteration_gives_the_same_survivors(tmp_path: Path) -> None:
    src = write_hostile(tmp_path / "trn.json")
    assert list(AmazonTitlesDataset(src, PrepareConfig(workers=1))) == SURVIVORS


def test_rejects_keep_the_first_n_of_each_reason(tmp_path: Path) -> None:
    src = tmp_path / "trn.json"
    src.write_bytes(b"".join(b"bad %d\n" % i for i in range(7)) + line(title="t", content="c"))
    config = PrepareConfig(workers=2, chunk_bytes=16, rejects_per_reason=3)
    manifest = AmazonTitlesDataset(src, config).prepare(tmp_path / "out", progress=False)
    assert manifest.dropped == {"malformed_json": 7}
    rejects = (tmp_path / "out" / "rejects.jsonl").read_bytes().splitlines()
    assert [orjson.loads(r)["line"] for r in rejects] == [1, 2, 3]
    assert manifest.rejects is not None and manifest.rejects.rows == 3


def test_gzip_input_gives_the_same_shards(tmp_path: Path) -> None:
    plain = write_hostile(tmp_path / "trn.json")
    packed = tmp_path / "trn.json.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    config = PrepareConfig(workers=2, chunk_bytes=100)
    a = AmazonTitlesDataset(plain, config).prepare(tmp_path / "a", progress=False)
    b = AmazonTitlesDataset(packed, config).prepare(tmp_path / "b", progress=False)
    assert b.input.compression == "gzip"
    assert (a.lines, a.kept, a.dropped, a.splits) == (b.lines, b.kept, b.dropped, b.splits)


@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_gzip_is_a_clear_error_and_leaves_nothing(tmp_path: Path, workers: int) -> None:
    body = b"".join(
        line(uid=str(i), title=f"Item {i}", content="x" * 50) + b"\n" for i in range(20000)
    )
    packed = gzip.compress(body)
    src = tmp_path / "trn.json.gz"
    src.write_bytes(packed[: len(packed) // 2])
    ds = AmazonTitlesDataset(src, PrepareConfig(workers=workers, chunk_bytes=1 << 16))
    with pytest.raises(
        DataFormatError, match=r"truncated or corrupt gzip .* ends after [\d,]+ complete lines"
    ) as exc:
        ds.prepare(tmp_path / "new", progress=False)
    lines_read = int(str(exc.value).split("ends after ")[1].split(" ")[0].replace(",", ""))
    assert 0 < lines_read < 20000
    assert not (tmp_path / "new").exists()  # the directory it created is gone
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError):
        ds.prepare(tmp_path / "empty", progress=False)
    assert list((tmp_path / "empty").iterdir()) == []  # no staging files, no manifest


def test_json_array_is_rejected_with_how_to_convert(tmp_path: Path) -> None:
    src = tmp_path / "trn.json"
    src.write_text(json.dumps([{"uid": "1", "title": "t", "content": "c"}], indent=2))
    with pytest.raises(
        DataFormatError, match=r"is a JSON array, not JSON Lines.*jq -c '\.\[\]' trn\.json"
    ):
        AmazonTitlesDataset(src)
    src.write_text('\ufeff[{"uid": "1", "title": "t", "content": "c"}]')  # one line, with BOM
    with pytest.raises(DataFormatError, match="JSON array"):
        AmazonTitlesDataset(src)


def test_pretty_printed_json_and_other_compressions_are_rejected(tmp_path: Path) -> None:
    src = tmp_path / "trn.json"
    src.write_text(json.dumps({"uid": "1", "title": "t", "content": "c"}, indent=2))
    with pytest.raises(DataFormatError, match="pretty-printed JSON"):
        AmazonTitlesDataset(src)
    src.write_bytes(b"BZh91AY&SY" + bytes(20))
    with pytest.raises(DataFormatError, match="bzip2-compressed"):
        AmazonTitlesDataset(src)


def test_missing_and_directory_inputs(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="input file not found"):
        AmazonTitlesDataset(tmp_path / "nope.json")
    with pytest.raises(UserError, match="is a directory"):
        AmazonTitlesDataset(tmp_path)


def test_byte_ranges_cover_the_file_in_whole_lines(tmp_path: Path) -> None:
    src = tmp_path / "f"
    data = b"".join(b"x" * (i % 7) + b"\n" for i in range(300)) + b"tail"
    src.write_bytes(data)
    for chunk in (1, 5, 64, 10_000):
        ranges = list(byte_ranges(src, len(data), chunk))
        assert b"".join(data[a:b] for a, b in ranges) == data
        assert all(data[b - 1 : b] == b"\n" for _, b in ranges[:-1])


def test_parse_line_fields() -> None:
    assert parse_line(b'{"uid": "1", "title": "t", "content": "c", "x": 1}\r') == {
        "uid": "1",
        "title": "t",
        "content": "c",
    }
    assert parse_line(b'\xef\xbb\xbf{"title": "t", "content": "c"}') == {
        "uid": None,
        "title": "t",
        "content": "c",
    }
