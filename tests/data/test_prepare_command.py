"""`productdesc prepare`: the summary, the sample, one-line errors with a non-zero exit."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from productdesc.cli import build_parser, main
from productdesc.data import PrepareConfig


def test_prepare_sample_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["prepare", "--sample", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert re.search(rf"kept\s+{manifest['kept']}\s", printed)
    for reason, count in manifest["dropped"].items():
        assert re.search(rf"{reason}\s+{count}\s", printed)
    assert re.search(rf"total lines\s+{manifest['lines']}\s+100.0%", printed)
    assert "records/s" in printed and "rejects.jsonl" in printed


def test_input_omitted_prepares_the_sample_with_options(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["prepare", "--out", str(tmp_path / "o"), "--keep-chars=-'&%/", "--split", "90/5/5"]
    assert main([*args, "--shard-size", "10", "--workers", "1", "--no-progress"]) == 0
    assert "bundled sample" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["config"]["steps"][3] == {
        "step": "keep_chars",
        "extra": "-'&%/",
        "fields": ["title", "content"],
    }
    assert manifest["config"]["split"] == {"train": 0.9, "validation": 0.05, "test": 0.05}
    assert all(s["rows"] <= 10 for s in manifest["splits"]["train"]["shards"])


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["missing.json"], "input file not found: missing.json"),
        (["--split", "98/2"], "split must be three shares"),
        (["--workers", "0"], "'workers' must be >= 1"),
        (["--keep-chars", "a b"], "must not contain whitespace"),
        (["--sample", "x.json"], "give INPUT or --sample, not both"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture, extra_args: list[str], message: str
) -> None:
    assert main(["prepare", *extra_args, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("productdesc prepare: error: ") and message in err
    assert err.count("\n") == 1


def test_output_directory_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "out")
    assert main(["prepare", "--sample", "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["prepare", "--sample", "--out", out, "--dedupe", "off", "--no-progress"]) == 2
    assert "holds a prepare of another config" in capsys.readouterr().err
    (tmp_path / "a_file").write_text("x")
    assert main(["prepare", "--sample", "--out", str(tmp_path / "a_file" / "sub")]) == 2
    assert "cannot create output directory" in capsys.readouterr().err


def test_json_array_input_says_how_to_convert(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src = tmp_path / "trn.json"
    src.write_text('[\n {"uid": "1", "title": "t", "content": "c"}\n]\n')
    assert main(["prepare", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "jq -c '.[]'" in capsys.readouterr().err


def test_help_states_prepare_configs_defaults() -> None:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices["prepare"]  # type: ignore[union-attr]
    helps = {a.dest: a.help for a in sub._actions}
    defaults = {a.name: a.default for a in attrs.fields(PrepareConfig)}
    assert f"({defaults['shard_size']})" in helps["shard_size"]
    assert f"({defaults['min_length']})" in helps["min_length"]
    assert f"({defaults['dedupe']})" in helps["dedupe"]
    assert f"({defaults['workers']})" in helps["workers"]
    assert f"({defaults['rejects_per_reason']})" in helps["rejects_per_reason"]
    assert "/".join(str(x) for x in defaults["split"]) in helps["split"]
    assert defaults["keep_chars"] == "" and "(none" in helps["keep_chars"]


def test_console_entry_point_shows_progress(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "productdesc.cli",
            "prepare",
            "--sample",
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "rec/s" in done.stderr  # the tqdm bar
    assert "Prepared trn_sample.jsonl" in done.stdout
