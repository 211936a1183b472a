"""prepare(): output layout, manifest, splits, determinism, output directory rules, interop."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import attrs
import pytest

from productdesc import AmazonTitlesDataset, PrepareConfig
from productdesc.data import Pipeline, Splitter, default_steps
from productdesc.data.cleaning import CleaningStepError, Record, normalise_text, stable_hash64
from productdesc.data.manifest import Manifest
from productdesc.data.reader import parse_line
from productdesc.data.synthetic import synthetic_records, write_trn
from productdesc.errors import DataFormatError, OutputDirError, UserError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 synthetic trn.json lines: entities, duplicates, empty descriptions."""
    return write_trn(tmp_path_factory.mktemp("syn") / "trn.json", n=3000, seed=1)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_output_layout_and_manifest(synthetic: Path, tmp_path: Path) -> None:
    config = PrepareConfig(shard_size=500, split="80/10/10")
    manifest = AmazonTitlesDataset(synthetic, config).prepare(tmp_path / "out", progress=False)
    out = tmp_path / "out"

    assert manifest.lines == 3000
    assert manifest.kept + sum(manifest.dropped.values()) == 3000
    assert set(manifest.dropped) == {"duplicate", "empty_content"}
    assert manifest.input.size == synthetic.stat().st_size
    assert manifest.input.name == "trn.json" and len(manifest.input.sha256) == 64
    assert manifest.config == json.loads(json.dumps(config.to_dict()))
    shards = manifest.splits["train"].shards
    assert [s.name for s in shards][:2] == ["train-00000.jsonl", "train-00001.jsonl"]
    assert all(s.rows == 500 for s in shards[:-1]) and 0 < shards[-1].rows <= 500
    assert sum(split.rows for split in manifest.splits.values()) == manifest.kept
    names = {s.name for split in manifest.splits.values() for s in split.shards}
    assert set(files(out)) == names | {"manifest.json", "rejects.jsonl"}
    # the manifest on disk is the one returned, and says what each shard holds
    assert Manifest.load(out) == manifest
    for split in manifest.splits.values():
        for shard in split.shards:
            assert len((out / shard.name).read_bytes().splitlines()) == shard.rows
    AmazonTitlesDataset.from_prepared(out).verify()


def test_rerun_is_byte_identical_whatever_workers_and_chunks(
    synthetic: Path, tmp_path: Path
) -> None:
    runs = [
        PrepareConfig(workers=1, shard_size=700),
        PrepareConfig(workers=2, shard_size=700, chunk_bytes=4096),
        PrepareConfig(workers=2, shard_size=700, chunk_bytes=1 << 30),
    ]
    outputs = []
    for i, config in enumerate(runs):
        AmazonTitlesDataset(synthetic, config).prepare(tmp_path / str(i), progress=False)
        outputs.append(files(tmp_path / str(i)))
    assert outputs[0] == outputs[1] == outputs[2]
    # refreshing the same directory with the same config rewrites the same bytes
    AmazonTitlesDataset(synthetic, runs[1]).prepare(tmp_path / "0", progress=False)
    assert files(tmp_path / "0") == outputs[0]


def test_parallel_run_equals_the_plain_loop_with_a_plugin_keyed_step(
    synthetic: Path, tmp_path: Path
) -> None:
    """A third-party keyed step gets the same answer over 2 workers as in one loop."""

    @attrs.frozen
    class SameOpening:
        reason = "same_opening"

        def key(self, record: Record) -> int | None:
            return (
                stable_hash64(normalise_text(record["content"])[:40]) if record["content"] else None
            )

    steps = (*default_steps(dedupe="off")[:4], SameOpening(), *default_steps()[4:])
    config = PrepareConfig(steps=steps, workers=2, chunk_bytes=20_000, split="1/0/0")
    manifest = AmazonTitlesDataset(synthetic, config).prepare(tmp_path / "out", progress=False)
    prepared = list(AmazonTitlesDataset.from_prepared(tmp_path / "out").iter_split("train"))

    lines = synthetic.read_bytes().splitlines()
    expected = list(Pipeline(steps).apply(parse_line(raw) for raw in lines))
    assert prepared == [r for r in expected if isinstance(r, dict)]
    assert manifest.dropped == dict(
        sorted(Counter(r.reason for r in expected if not isinstance(r, dict)).items())
    )
    assert manifest.dropped["same_opening"] > 0
    assert manifest.config["steps"][4]["step"].endswith("SameOpening")


def test_split_assignment_is_pinned() -> None:
    """Same answer on every machine and run: a change here re-splits users' data."""
    splitter = Splitter((0.98, 0.01, 0.01))
    assert splitter.name("Evergreen Premium Kettle") == "train"
    assert splitter.name("Harbor Vintage Tent") == "train"
    assert splitter.name("Cedar Compact Tent") == "validation"
    assert splitter.name("Cedar Soft Puzzle") == "validation"
    assert splitter.name("Willow Soft Scarf") == "test"
    assert splitter.name("Lumen Vintage Mug") == "test"
    assert splitter.name("  lumen VINTAGE   mug") == "test"  # normalised title
    counts = Counter(splitter.name(f"product {i}") for i in range(10_000))
    assert counts == {"train": 9800, "validation": 100, "test": 100}
    assert Splitter((1.0, 0.0, 0.0)).name("Willow Soft Scarf") == "train"


def test_same_title_never_in_two_splits(synthetic: Path, tmp_path: Path) -> None:
    config = PrepareConfig(split="50/25/25", dedupe="uid")  # keep same-title records
    AmazonTitlesDataset(synthetic, config).prepare(tmp_path / "out", progress=False)
    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    where: dict[str, set[str]] = {}
    for split in ("train", "validation", "test"):
        for record in prepared.iter_split(split):
            where.setdefault(normalise_text(record["title"]), set()).add(split)
    assert max(len(s) for s in where.values()) == 1
    assert all(prepared.splits[s] > 0 for s in ("train", "validation", "test"))


def test_output_directory_rules(synthetic: Path, tmp_path: Path) -> None:
    ds = AmazonTitlesDataset(synthetic, PrepareConfig(shard_size=1000))
    ds.prepare(tmp_path / "out", progress=False)

    other_config = AmazonTitlesDataset(synthetic, PrepareConfig(shard_size=1000, keep_chars="-"))
    with pytest.raises(OutputDirError, match=r"another config \(differs in: steps\)"):
        other_config.prepare(tmp_path / "out", progress=False)

    other_input = tmp_path / "other.json"
    other_input.write_bytes(synthetic.read_bytes()[:-200].rsplit(b"\n", 1)[0] + b"\n")
    with pytest.raises(OutputDirError, match="another input"):
        AmazonTitlesDataset(other_input, ds.config).prepare(tmp_path / "out", progress=False)

    same_size = tmp_path / "same_size.json"  # same size, other bytes: found by the hash
    data = bytearray(synthetic.read_bytes())
    data[data.index(b"Acme")] = ord("X") if b"Acme" in data else data[0]
    same_size.write_bytes(bytes(data))
    before = files(tmp_path / "out")
    with pytest.raises(OutputDirError, match="another input"):
        AmazonTitlesDataset(same_size, ds.config).prepare(tmp_path / "out", progress=False)
    assert files(tmp_path / "out") == before  # untouched

    # run options do not count: another worker count refreshes the same directory
    AmazonTitlesDataset(synthetic, attrs.evolve(ds.config, workers=1)).prepare(
        tmp_path / "out", progress=False
    )
    assert files(tmp_path / "out") == before

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(OutputDirError, match="not empty and holds no prepared data"):
        ds.prepare(tmp_path / "notes", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        ds.prepare(tmp_path / "file", progress=False)


def test_a_step_that_raises_names_the_line_and_writes_nothing(
    synthetic: Path, tmp_path: Path
) -> None:
    def fragile(record: Record) -> Record:
        if record["uid"] == "B000000042":
            raise KeyError("price")
        return record

    ds = AmazonTitlesDataset(
        synthetic, PrepareConfig(steps=(fragile,), workers=2, chunk_bytes=10_000)
    )
    with pytest.raises(
        CleaningStepError, match=r"line 43: cleaning step .*fragile raised KeyError"
    ):
        ds.prepare(tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_from_prepared_errors_and_verify(synthetic: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no prepared data"):
        AmazonTitlesDataset.from_prepared(tmp_path)
    AmazonTitlesDataset(synthetic, PrepareConfig()).prepare(tmp_path / "out", progress=False)
    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    with pytest.raises(UserError, match="no split 'dev'"):
        list(prepared.iter_split("dev"))
    shard = prepared.shard_paths("train")[0]
    shard.write_bytes(shard.read_bytes().replace(b"a", b"b", 1))
    with pytest.raises(DataFormatError, match="differs from the manifest"):
        prepared.verify()
    shard.unlink()
    with pytest.raises(UserError, match="missing"):
        AmazonTitlesDataset.from_prepared(tmp_path / "out")


def test_to_hf_dataset(synthetic: Path, tmp_path: Path) -> None:
    AmazonTitlesDataset(synthetic, PrepareConfig(shard_size=400)).prepare(
        tmp_path / "out", progress=False
    )
    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    train = prepared.to_hf_dataset("train", cache_dir=str(tmp_path / "hf"))
    assert train.column_names == ["uid", "title", "content"]
    assert train.num_rows == prepared.splits["train"]
    assert train[:3] == {
        k: [r[k] for r in list(prepared.iter_split("train"))[:3]] for k in train.column_names
    }
    streamed = prepared.to_hf_dataset("validation", streaming=True)
    assert [r["uid"] for r in streamed] == [r["uid"] for r in prepared.iter_split("validation")]


def test_empty_split_gives_an_empty_hf_dataset(tmp_path: Path) -> None:
    src = tmp_path / "trn.json"
    src.write_text('{"uid": "1", "title": "Only one", "content": "record"}\n')
    AmazonTitlesDataset(src, PrepareConfig(split="1/0/0")).prepare(tmp_path / "out", progress=False)
    prepared = AmazonTitlesDataset.from_prepared(tmp_path / "out")
    assert prepared.splits == {"train": 1, "validation": 0, "test": 0}
    assert prepared.to_hf_dataset("test").num_rows == 0
    assert list(prepared.to_hf_dataset("test", streaming=True)) == []
    assert list(prepared.iter_split("test")) == []


def test_synthetic_records_are_deterministic_and_shaped_like_the_dump() -> None:
    first = list(synthetic_records(2000, seed=3))
    assert first == list(synthetic_records(2000, seed=3))
    assert first != list(synthetic_records(2000, seed=4))
    empty = sum(not r["content"] for r in first) / len(first)
    entities = sum("&" in r["title"] + r["content"] for r in first) / len(first)
    assert 0.40 < empty < 0.50 and 0.17 < entities < 0.27
    lengths = sorted(len(r["content"]) for r in first if r["content"])
    assert 350 < lengths[len(lengths) // 2] < 560
    assert all(len(r["target_ind"]) == len(r["target_rel"]) > 0 for r in first)
    assert len({r["uid"] for r in first}) == len(first)
