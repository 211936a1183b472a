"""The trn.json sample shipped in the package."""

from __future__ import annotations

from pathlib import Path

import orjson

from productdesc import AmazonTitlesDataset
from productdesc.data import sample_path


def test_bundled_sample(tmp_path: Path) -> None:
    lines = sample_path().read_bytes().splitlines()
    records = [orjson.loads(x) for x in lines]
    assert len(records) >= 100
    assert all(set(r) == {"uid", "title", "content", "target_ind", "target_rel"} for r in records)
    assert any("&amp;quot;" in r["title"] + r["content"] for r in records)  # double-escaped
    assert sum(not r["content"] for r in records) >= 10
    manifest = AmazonTitlesDataset.sample().prepare(tmp_path / "out", progress=False)
    assert manifest.lines == len(records)
    assert {"duplicate", "empty_content"} <= set(manifest.dropped)
    kept = list(AmazonTitlesDataset.sample())
    assert len(kept) == manifest.kept
    assert not any("&" in r["title"] + r["content"] for r in kept)
