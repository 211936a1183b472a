"""Write an evaluation as files people and machines read.

``write_report(result, out_dir)`` writes, each atomically:

* ``results.json``: every number (:meth:`EvalResult.to_dict`), per-record scores included;
* ``loss.png``: the training loss curve from the run's ``loss_history.json`` (Agg backend);
* ``report.md``: the metrics table with intervals, the paired differences, a sample of records;
* ``report.html``: the same as one self-contained page (inline CSS, the PNG embedded).

All model and data text is HTML-escaped in both the page and the Markdown (Markdown renders
raw HTML), so a description holding ``<script>`` shows as text.
"""

from __future__ import annotations

import base64
import html
import logging
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from productdesc._io import atomic_write, write_text_atomic
from productdesc.evaluate.metrics import METRICS, Interval
from productdesc.evaluate.result import EvalResult
from productdesc.plotting import plot_loss
from productdesc.rundir import HISTORY_FILE, PLOT_FILE

__all__ = [
    "REPORT_FILES",
    "format_interval",
    "plot_loss",
    "render_html",
    "render_markdown",
    "write_report",
]

logger = logging.getLogger(__name__)

# the training curve keeps the name the run gave it
REPORT_FILES = ("results.json", PLOT_FILE, "report.md", "report.html")
_SAMPLE_CHARS = 600  # a sample cell's longest text; results.json keeps the full answers

# metric name -> how its values print (ROUGE, shares 0-1; BLEU and chrF 0-100)
_FORMATS: dict[str, str] = {
    "rouge1": "{:.3f}",
    "rouge2": "{:.3f}",
    "rougeL": "{:.3f}",
    "bleu": "{:.1f}",
    "chrf": "{:.1f}",
    "words": "{:.1f}",
    "length_ratio": "{:.2f}",
    "eos": "{:.2f}",
    "repetition": "{:.3f}",
}
_DIFF_METRICS = ("rougeL", "rouge1", "bleu", "chrf")


def write_report(
    result: EvalResult, out_dir: str | os.PathLike[str], *, title: str = "Evaluation"
) -> dict[str, Path]:
    """Write the report files into ``out_dir`` (created); returns ``file name -> path``.

    ``title`` heads both reports. ``loss.png`` is written only when the run's loss history was
    found; the report then says so.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with atomic_write(out / "results.json", "wb") as fh:
        fh.write(result.to_json())
    written["results.json"] = out / "results.json"
    png = plot_loss(result.loss_history) if result.loss_history else None
    if png is not None:
        with atomic_write(out / PLOT_FILE, "wb") as fh:
            fh.write(png)
        written[PLOT_FILE] = out / PLOT_FILE
    write_text_atomic(
        out / "report.md", render_markdown(result, has_plot=png is not None, title=title)
    )
    written["report.md"] = out / "report.md"
    write_text_atomic(out / "report.html", render_html(result, png, title=title))
    written["report.html"] = out / "report.html"
    logger.info("evaluation report written to %s", out)
    return written


# -- shared pieces ------------------------------------------------------------------------------
def _columns(result: EvalResult) -> list[tuple[str, str]]:
    present = {name for table in result.intervals.values() for name in table}
    return [(m.name, m.label) for m in METRICS if m.name in present]


def _cell(name: str, interval: Interval | None, *, signed: bool = False) -> tuple[str, str]:
    """(value, interval) as text; a metric a system lacks is ``n/a``."""
    if interval is None:
        return "n/a", ""
    fmt = _FORMATS.get(name, "{:.3f}")
    if signed:
        fmt = fmt.replace("{:", "{:+")
    value = "n/a" if interval.value != interval.value else fmt.format(interval.value)
    if interval.low != interval.low:
        return value, ""
    return value, f"[{fmt.format(interval.low)}, {fmt.format(interval.high)}]"


def format_interval(metric: str, interval: Interval | None, *, signed: bool = False) -> str:
    """``"0.213 [0.190, 0.238]"`` in the metric's precision; ``"n/a"`` for a missing metric."""
    value, ci = _cell(metric, interval, signed=signed)
    return f"{value} {ci}".strip()


def _reference_words(result: EvalResult) -> float:
    words = [len(r["reference"].split()) for r in result.records]
    return sum(words) / len(words)


def _sample_indices(result: EvalResult) -> list[int]:
    n, k = len(result.records), int(result.meta.get("samples", 10))
    rng = random.Random(result.meta.get("seed", 0))
    return sorted(rng.sample(range(n), min(k, n)))


def _clip(text: str) -> str:
    return text if len(text) <= _SAMPLE_CHARS else text[:_SAMPLE_CHARS].rstrip() + " …"


def _describe_settings(result: EvalResult) -> list[tuple[str, str]]:
    meta = result.meta
    gen = meta.get("generation") or {}
    decoding = (
        "greedy" if not gen.get("do_sample") else f"sampling (T={gen.get('temperature')})"
    ) + (f", at most {gen['max_new_tokens']} new tokens" if "max_new_tokens" in gen else "")
    rows = [
        ("model", meta.get("model_dir", "")),
        ("compared with", meta.get("compare_dir") or ""),
        ("tuned + context", meta.get("context_dir") or ""),
        ("retrieval index", meta.get("index") or ""),
        ("data", f"{meta.get('data_dir', '')}, split {meta.get('split', '')!r}"),
        ("records", str(meta.get("records", len(result.records)))),
        ("decoding", decoding if gen else ""),
        ("hybrid copies at", _copy_threshold(meta)),
        (
            "intervals",
            f"95% percentile bootstrap over records, {meta.get('n_resamples')} resamples, "
            f"seed {meta.get('seed')}; BLEU and chrF are corpus scores recomputed per resample",
        ),
        (
            "created",
            f"{meta.get('created', '')} (productdesc {meta.get('productdesc_version', '')})",
        ),
    ]
    for run in result.runs.values():
        if run.seconds:
            rows.append((f"time: {run.name}", f"{run.seconds:.1f} s"))
    return [(k, v) for k, v in rows if v]


def _copy_threshold(meta: dict[str, Any]) -> str:
    threshold = meta.get("hybrid_threshold")
    if threshold is None:
        return ""
    fitted = meta.get("hybrid_fitted_on")
    how = "given" if fitted is None else f"fitted on {fitted} validation records"
    return f"BM25 >= {threshold:g} ({how})"


def _loss_note(result: EvalResult, has_plot: bool) -> str:
    if has_plot:
        return ""
    where = result.meta.get("model_dir", "the model directory")
    if result.loss_history is None:
        return f"No training curve: no readable {HISTORY_FILE} in {where}."
    return f"No training curve: {HISTORY_FILE} in {where} holds no loss values."


# -- Markdown -----------------------------------------------------------------------------------
def _md(text: str) -> str:
    escaped = html.escape(text, quote=False).replace("|", "\\|")
    return " ".join(escaped.split())  # a table cell is one line


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(
    result: EvalResult, *, has_plot: bool = False, title: str = "Evaluation"
) -> str:
    """The report as Markdown (``loss.png`` linked when ``has_plot``)."""
    columns = _columns(result)
    lines = [f"# {_md(title)}", ""]
    lines += _md_table(
        ["setting", "value"], [(_md(k), _md(v)) for k, v in _describe_settings(result)]
    )
    lines += ["", "## Metrics", ""]
    rows = []
    for name, run in result.runs.items():
        cells = [format_interval(m, result.intervals[name].get(m)) for m, _ in columns]
        rows.append([_md(run.label), *cells])
    lines += _md_table(["system", *(label for _, label in columns)], rows)
    lines += [
        "",
        f"ROUGE F1 (stemmed), EOS share and repetition (share of repeated word 4-grams) are 0-1; "
        f"BLEU and chrF 0-100. Words: mean answer length; references average "
        f"{_reference_words(result):.1f} words. Length ratio: total answer words / total "
        f"reference words. Brackets: 95% bootstrap interval.",
    ]
    if result.differences:
        lines += ["", "## Differences (paired bootstrap)", ""]
        diff_cols = [m for m in _DIFF_METRICS if any(m in t for t in result.differences.values())]
        rows = []
        for pair, table in result.differences.items():
            cells = [format_interval(m, table.get(m), signed=True) for m in diff_cols]
            rows.append([_md(pair), *cells])
        labels = {m.name: m.label for m in METRICS}
        lines += _md_table(["systems", *(labels[m] for m in diff_cols)], rows)
        lines += ["", "An interval that excludes 0 is a difference these records support."]
    lines += ["", "## Training loss", ""]
    lines.append(
        f"![training loss]({PLOT_FILE})" if has_plot else _md(_loss_note(result, has_plot))
    )
    lines += ["", "## Sample of records", ""]
    for number, i in enumerate(_sample_indices(result), 1):
        record = result.records[i]
        lines += [f"### {number}. {_md(record['title'])}", ""]
        rows = [["reference", _md(_clip(record["reference"]))]]
        rows += [[_md(run.name), _md(_clip(run.outputs[i]))] for run in result.runs.values()]
        lines += _md_table(["", "text"], rows)
        lines.append("")
    if result.meta.get("run_config"):
        lines += [
            "## Training configuration",
            "",
            "```toml",
            result.meta["run_config"].rstrip(),
            "```",
        ]
    return "\n".join(lines).rstrip() + "\n"


# -- HTML ---------------------------------------------------------------------------------------
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1d1d1f; }
h1, h2 { font-weight: 600; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0; }
th, td { border: 1px solid #d8d8d8; padding: .35rem .55rem; vertical-align: top; text-align: left; }
th { background: #f4f5f7; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.ci { color: #6e6e73; font-size: .82em; display: block; }
table.samples td { font-size: .9em; width: 18%; }
table.samples td:first-child { font-weight: 600; width: 10%; }
.note { color: #6e6e73; }
img { max-width: 100%; }
pre { background: #f6f8fa; padding: .6rem; overflow-x: auto; }
"""


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num_td(value_ci: tuple[str, str]) -> str:
    value, ci = value_ci
    return (
        f'<td class="num">{_h(value)}'
        + (f'<span class="ci">{_h(ci)}</span>' if ci else "")
        + "</td>"
    )


def _html_differences(result: EvalResult) -> list[str]:
    """The paired-bootstrap differences section, or nothing where no pair was compared."""
    if not result.differences:
        return []
    diff_cols = [m for m in _DIFF_METRICS if any(m in t for t in result.differences.values())]
    labels = {m.name: m.label for m in METRICS}
    rows = [
        [
            f"<th>{_h(pair)}</th>",
            *(_num_td(_cell(m, table.get(m), signed=True)) for m in diff_cols),
        ]
        for pair, table in result.differences.items()
    ]
    return [
        "<h2>Differences (paired bootstrap)</h2>",
        _html_table(["systems", *(_h(labels[m]) for m in diff_cols)], rows),
        '<p class="note">An interval that excludes 0 is a difference these records support.</p>',
    ]


def render_html(result: EvalResult, png: bytes | None = None, *, title: str = "Evaluation") -> str:
    """The report as one self-contained HTML page (the loss PNG inlined as base64)."""
    columns = _columns(result)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>productdesc: {_h(title)}: {_h(result.meta.get('model_dir', ''))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_h(title)}</h1>",
        _html_table(
            ["setting", "value"],
            [[f"<td>{_h(k)}</td>", f"<td>{_h(v)}</td>"] for k, v in _describe_settings(result)],
        ),
        "<h2>Metrics</h2>",
    ]
    rows = []
    for name, run in result.runs.items():
        cells = [_num_td(_cell(m, result.intervals[name].get(m))) for m, _ in columns]
        rows.append([f"<th>{_h(run.label)}</th>", *cells])
    parts.append(_html_table(["system", *(_h(label) for _, label in columns)], rows, "metrics"))
    parts.append(
        '<p class="note">ROUGE F1 (stemmed), EOS share and repetition (share of repeated word '
        "4-grams) are 0-1; BLEU and chrF 0-100. Words: mean answer length; references average "
        f"{_reference_words(result):.1f} words. Length ratio: total answer words / total "
        "reference words. Small grey: 95% bootstrap interval.</p>"
    )
    parts += _html_differences(result)
    parts.append("<h2>Training loss</h2>")
    if png is not None:
        encoded = base64.b64encode(png).decode("ascii")
        parts.append(f'<img alt="training loss" src="data:image/png;base64,{encoded}">')
    else:
        parts.append(f'<p class="note">{_h(_loss_note(result, False))}</p>')
    parts.append("<h2>Sample of records</h2>")
    header = ["title", "reference", *(_h(run.label) for run in result.runs.values())]
    rows = []
    for i in _sample_indices(result):
        record = result.records[i]
        texts = [record["title"], _clip(record["reference"])]
        texts += [_clip(run.outputs[i]) for run in result.runs.values()]
        rows.append([f"<td>{_h(t)}</td>" for t in texts])
    parts.append(_html_table(header, rows, "samples"))
    if result.meta.get("run_config"):
        parts += [
            "<h2>Training configuration</h2>",
            f"<pre>{_h(result.meta['run_config'])}</pre>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
