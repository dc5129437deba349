"""report.html: one self-contained page with the verdict, the summary and the plots."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..atomic import atomic_open

STYLE = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
         "pre{background:#f4f4f4;padding:8px;overflow-x:auto}img{max-width:100%;display:block;margin:1em 0}")


def _findings(verdict: list[dict[str, Any]]) -> str:
    if not verdict:
        return "<p>No finding: nothing in the data looks likely to stop training.</p>"
    rows = "".join(
        f"<tr><td>{f['severity']:.3f}</td><td>{html.escape(f['finding'])}</td>"
        f"<td><code>{html.escape(f['fix'])}</code></td></tr>" for f in verdict
    )
    return f"<table><tr><th>severity</th><th>finding</th><th>fix</th></tr>{rows}</table>"


def write_html(path: Path, report: dict[str, Any], summary: list[str], plots: list[str]) -> None:
    """Write ``path`` atomically; the plots are referenced by file name (same folder)."""
    images = "".join(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in plots)
    body = (
        f"<h1>solov2 inspect: {html.escape(str(report['dataset']['ann_file']))}</h1>"
        f"<p>config <code>{html.escape(report['config'])}</code>, images "
        f"<code>{html.escape(report['images_dir'])}</code></p>"
        f"<h2>Verdict</h2>{_findings(report['verdict'])}"
        f"<h2>Summary</h2><pre>{html.escape(chr(10).join(summary))}</pre>"
        f"<h2>Plots</h2>{images or '<p>(no plots: matplotlib missing or --no-plots)</p>'}"
        "<p>All numbers: report.json in this folder.</p>"
    )
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>solov2 inspect</title>" \
           f"<style>{STYLE}</style></head><body>{body}</body></html>"
    with atomic_open(path, "w") as f:
        f.write(page)
