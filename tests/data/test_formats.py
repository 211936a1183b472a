"""``prepare`` of CSV, parquet and ``datasets`` inputs: the same records give the same shards
as a JSON Lines file, through the same counts, rejects and split."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from productdesc import AmazonTitlesDataset, PrepareConfig
from productdesc.cli import main
from productdesc.errors import DataFormatError, UserError

FIELDS = ("uid", "title", "content")


def _records() -> list[dict[str, str]]:
    records = [
        {
            "uid": f"B{i:04d}",
            "title": f"Widget &amp; Co {i % 37} caf\u00e9",
            "content": f'A "quoted", comma line {i}\nsecond line; size {i % 5}',
        }
        for i in range(300)
    ]
    records[7]["content"] = ""  # empty_content
    records[11] = dict(records[10], uid="B9999")  # a duplicate
    records[20]["title"] = "<b>&amp;amp;</b>"
    return records


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _write_csv(
    path: Path, records: list[dict[str, str]], names: tuple[str, ...] = FIELDS, sep: str = ","
) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=sep)
        writer.writerow(names)
        writer.writerows([r[f] for f in FIELDS] for r in records)
    return path


def _write_parquet(path: Path, columns: dict[str, list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=64)
    return path


def _columns(records: list[dict[str, str]], names: tuple[str, ...] = FIELDS) -> dict:
    return {name: [r[f] for r in records] for name, f in zip(names, FIELDS, strict=True)}


def _outputs(out: Path) -> dict[str, bytes]:
    """The shards, byte for byte: what a user compares."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*-*.jsonl"))}


def _prepare(src: Path | str, out: Path, **options: object) -> dict:
    config = PrepareConfig(shard_size=70, split=(80, 10, 10), chunk_bytes=4096, **options)
    AmazonTitlesDataset(src, config).prepare(out, progress=False)
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture
def reference(tmp_path: Path) -> tuple[dict[str, bytes], dict]:
    out = tmp_path / "from-jsonl"
    manifest = _prepare(_write_jsonl(tmp_path / "trn.jsonl", _records()), out, workers=1)
    return _outputs(out), manifest


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "tsv", "parquet", "dataset"])
@pytest.mark.parametrize("workers", [1, 2])
def test_a_table_of_the_same_records_gives_the_same_shards(
    tmp_path: Path, reference: tuple[dict[str, bytes], dict], fmt: str, workers: int
) -> None:
    records = _records()
    if fmt == "parquet":
        src: Path = _write_parquet(tmp_path / "trn.parquet", _columns(records))
    elif fmt == "dataset":  # a directory datasets.load_dataset reads
        _write_parquet(tmp_path / "hf" / "data" / "train-00000.parquet", _columns(records))
        src = tmp_path / "hf"
    else:
        src = _write_csv(tmp_path / f"trn.{fmt}", records, sep="\t" if fmt == "tsv" else ",")
    shards, expected = reference
    manifest = _prepare(src, tmp_path / "out", workers=workers)
    assert _outputs(tmp_path / "out") == shards and len(shards) > 3
    for key in ("lines", "kept", "dropped", "splits", "config"):
        assert manifest[key] == expected[key], key
    assert manifest["dropped"] == {"duplicate": 1, "empty_content": 1}
    assert manifest["input"]["format"] == ("csv" if fmt.startswith(("csv", "tsv")) else fmt)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    assert [(r["line"], r["reason"]) for r in rejects] == [(8, "empty_content"), (12, "duplicate")]


def test_a_csv_file_is_hashed_and_a_dataset_is_identified(tmp_path: Path) -> None:
    records = _records()[:40]
    src = _write_csv(tmp_path / "items.csv", records)
    info = _prepare(src, tmp_path / "a")["input"]
    assert info["name"] == "items.csv" and info["size"] == src.stat().st_size
    assert info["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    _write_parquet(tmp_path / "hf" / "train.parquet", _columns(records))
    _write_parquet(tmp_path / "hf" / "test.parquet", _columns(records[:5]))
    with pytest.raises(UserError, match=r"splits .*train.*choose one with --dataset-split"):
        AmazonTitlesDataset(tmp_path / "hf")
    with pytest.raises(UserError, match="no split 'dev'; its splits"):
        AmazonTitlesDataset(tmp_path / "hf", split="dev")
    ds = AmazonTitlesDataset(tmp_path / "hf", PrepareConfig(workers=1), split="test")
    manifest = ds.prepare(tmp_path / "b", progress=False)
    assert (manifest.input.name, manifest.input.format, manifest.input.split) == (
        "hf",
        "dataset",
        "test",
    )
    assert manifest.lines == 5 and len(manifest.input.sha256) == 64
    again = AmazonTitlesDataset(tmp_path / "hf", PrepareConfig(workers=1), split="test")
    assert again.prepare(tmp_path / "b", progress=False).input == manifest.input
    jsonl_manifest = _prepare(_write_jsonl(tmp_path / "t.jsonl", records), tmp_path / "c")
    assert set(jsonl_manifest["input"]) == {"name", "size", "sha256", "compression"}
    assert "columns" not in jsonl_manifest["config"]


def test_the_column_mapping_reads_other_names(tmp_path: Path) -> None:
    records = _records()[:60]
    names = ("asin", "name", "description")
    plain = _prepare(_write_jsonl(tmp_path / "t.jsonl", records), tmp_path / "ref")
    src = _write_csv(tmp_path / "items.csv", records, names)
    columns = "uid=asin, title=name,content=description"
    manifest = _prepare(src, tmp_path / "csv", columns=columns)
    assert _outputs(tmp_path / "csv") == _outputs(tmp_path / "ref")
    assert manifest["config"]["columns"] == {
        "content": "description",
        "title": "name",
        "uid": "asin",
    }
    assert manifest["kept"] == plain["kept"]
    # JSON keys are columns too.
    renamed = [dict(zip(names, (r[f] for f in FIELDS), strict=True)) for r in records]
    _prepare(_write_jsonl(tmp_path / "r.jsonl", renamed), tmp_path / "json", columns=columns)
    assert _outputs(tmp_path / "json") == _outputs(tmp_path / "ref")
    assert PrepareConfig(columns={"title": "title"}) == PrepareConfig()
    assert PrepareConfig(columns="content=d,title=n").column_names() == ("uid", "n", "d")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ("name=x", "maps 'name', not a record field"),
        ("title", "not FIELD=COLUMN"),
        ("title=a,title=b", "maps a field twice"),
        (3, "must be FIELD=COLUMN pairs"),
    ],
)
def test_bad_column_mappings(columns: object, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        PrepareConfig(columns=columns)


def test_an_unknown_column_names_the_columns_there(tmp_path: Path) -> None:
    records = _records()[:5]
    src = _write_csv(tmp_path / "items.csv", records, ("asin", "name", "description"))
    with pytest.raises(DataFormatError, match=r"no column 'title'; its columns: 'asin', 'name'"):
        AmazonTitlesDataset(src)
    config = PrepareConfig(columns="title=nme,content=description")
    with pytest.raises(DataFormatError, match=r"no column 'nme' \(given for title in columns\)"):
        AmazonTitlesDataset(src, config)
    parquet = _write_parquet(tmp_path / "p.parquet", {"title": [1, 2], "content": ["a", "b"]})
    with pytest.raises(DataFormatError, match="column 'title' holds int64, not text"):
        AmazonTitlesDataset(parquet)
    _write_parquet(tmp_path / "hf" / "train.parquet", _columns(records, ("a", "b", "c")))
    with pytest.raises(DataFormatError, match=r"no column 'title'; its columns: 'a', 'b', 'c'"):
        AmazonTitlesDataset(tmp_path / "hf")


def test_rows_missing_a_field_are_dropped_and_counted(tmp_path: Path) -> None:
    src = _write_parquet(
        tmp_path / "p.parquet",
        {
            "uid": ["1", "2", None, "4"],
            "title": ["a b", None, "c d", "e f"],
            "content": ["x y", "z", "w v", None],
        },
    )
    manifest = _prepare(src, tmp_path / "out", workers=1)
    assert (manifest["lines"], manifest["kept"]) == (4, 2)
    assert manifest["dropped"] == {"missing_field": 2}
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    assert [(r["line"], r["detail"]) for r in rejects] == [
        (2, "no 'title' field"),
        (4, "no 'content' field"),
    ]
    assert json.loads(rejects[0]["raw"]) == {"uid": "2", "content": "z"}


def test_files_whose_format_cannot_be_told_or_read(tmp_path: Path) -> None:
    (tmp_path / "items.txt").write_text("title,content\na,b\n")
    with pytest.raises(DataFormatError, match=r"cannot tell the format of .*items\.txt"):
        AmazonTitlesDataset(tmp_path / "items.txt")
    (tmp_path / "fake.parquet").write_text("title,content\n")
    with pytest.raises(DataFormatError, match="is not a parquet file"):
        AmazonTitlesDataset(tmp_path / "fake.parquet")
    (tmp_path / "ragged.csv").write_text("title,content\na,b\nc\n")
    with pytest.raises(DataFormatError, match="Expected 2 columns, got 1"):
        AmazonTitlesDataset(tmp_path / "ragged.csv")
    with pytest.raises(UserError, match="a split is chosen only in a dataset"):
        AmazonTitlesDataset(_write_csv(tmp_path / "t.csv", _records()[:2]), split="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is a directory that datasets cannot load"):
        AmazonTitlesDataset(tmp_path / "empty")


def test_a_bad_csv_row_past_the_first_block_fails_writing_nothing(tmp_path: Path) -> None:
    src = tmp_path / "big.csv"
    rows = "".join(f"{i},title {i},content {i}\n" for i in range(120_000))  # > one block
    src.write_text(f"uid,title,content\n{rows}1,2\n")
    with pytest.raises(DataFormatError, match=r"failed after [\d,]+ rows .*Expected 3 columns"):
        _prepare(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prepares_a_csv_with_a_column_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = _write_csv(tmp_path / "items.csv", _records()[:50], ("asin", "name", "description"))
    out = tmp_path / "d"
    args = ["prepare", str(src), "--out", str(out), "--no-progress", "--workers", "1"]
    assert main([*args, "--columns", "uid=asin,title=name,content=description"]) == 0
    assert "Prepared items.csv" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["kept"] == 48
    assert main([*args[:3], str(tmp_path / "e"), *args[4:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("productdesc prepare: error: ") and err.count("\n") == 1
    assert "no column 'title'; its columns: 'asin', 'name', 'description'" in err


def test_import_productdesc_loads_no_table_libraries() -> None:
    code = (
        "import sys, productdesc, productdesc.data, productdesc.cli.prepare\n"
        "print(sorted(m for m in ('datasets', 'pyarrow', 'pandas') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
