"""A self-contained HTML report: plotly figures embedded with plotly.js inlined once (no network to view).

Example:
    >>> import plotly.graph_objects as go
    >>> html = render_report("Study", [Section("Geometry", text="Per-layer cosines.",
    ...     tables=[Table("cos", [{"layer": 0, "cos": -0.5}])], figures=[go.Figure()])])
    >>> html.count("<h2"), "<script src" in html
    (1, False)
"""

from __future__ import annotations

import html as _html
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}.note{background:#fff7d6;padding:.6em 1em;border-left:4px solid #e0b000}
.missing{color:#a00}
"""


@dataclass
class Table:
    title: str
    rows: Sequence[dict[str, Any]]


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    figures: list[go.Figure] = field(default_factory=list)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "—"
    return _html.escape(str(value))


def _table_html(table: Table) -> str:
    if not table.rows:
        return f"<p class='missing'>{_html.escape(table.title)}: no rows</p>"
    columns: list[str] = []
    for row in table.rows:
        columns += [c for c in row if c not in columns]
    head = "".join(f"<th>{_html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in columns) + "</tr>" for row in table.rows
    )
    return f"<h3>{_html.escape(table.title)}</h3><table><tr>{head}</tr>{body}</table>"


def render_report(title: str, sections: Sequence[Section], *, notes: Sequence[str] = ()) -> str:
    """The whole report as one HTML string."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{_html.escape(title)}</title><style>{_STYLE}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{_html.escape(title)}</h1>",
    ]
    parts += [f"<p class='note'>{_html.escape(n)}</p>" for n in notes]
    for section in sections:
        parts.append(f"<h2>{_html.escape(section.title)}</h2>")
        if section.text:
            parts += [f"<p>{_html.escape(p)}</p>" for p in section.text.split("\n\n")]
        parts += [_table_html(t) for t in section.tables]
        parts += [f.to_html(full_html=False, include_plotlyjs=False) for f in section.figures]
    parts.append("</body></html>")
    return "\n".join(parts)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_") or "figure"


def bundled_renderer_dir() -> Path:
    """Where ``scripts/install_png_renderer.sh`` puts kaleido 0.2.1 (its own headless Chromium; PyPI only)."""
    return Path(
        os.environ.get("WELFARE_AXIS_PNG_RENDERER", Path.home() / ".cache" / "welfare-axis" / "kaleido-0.2.1")
    )


_BUNDLED_RENDER = """
import json, sys
from kaleido.scopes.plotly import PlotlyScope
request = json.load(open(sys.argv[1]))
scope = PlotlyScope(plotlyjs=request["plotlyjs"])
for figure, path in zip(request["figures"], request["paths"]):
    open(path, "wb").write(scope.transform(figure, format="png", scale=request["scale"]))
"""


def _render_with_bundled_chromium(figures: list[go.Figure], paths: list[Path], scale: float) -> None:
    """PNGs through kaleido 0.2.1's bundled Chromium in a child process (it cannot share an environment with
    kaleido 1.x), with this environment's plotly.js, so the figures render as the HTML report shows them."""
    import json
    import subprocess
    import sys

    import plotly

    request = {
        "plotlyjs": str(Path(plotly.__file__).parent / "package_data" / "plotly.min.js"),
        "figures": [json.loads(f.to_json()) for f in figures],
        "paths": [str(p) for p in paths],
        "scale": scale,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(request, handle)
    try:
        env = {**os.environ, "PYTHONPATH": str(bundled_renderer_dir())}
        done = subprocess.run([sys.executable, "-c", _BUNDLED_RENDER, handle.name], env=env, capture_output=True,
                              text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"bundled Chromium failed: {done.stderr.strip().splitlines()[-1:]}")
    finally:
        os.unlink(handle.name)


_EXPORT_NAME = re.compile(r"\d{2}_\d+_\w*\.png")
"""File names :func:`export_figures` writes: ``<section>_<figure>_<title slug>.png``."""


def export_figures(
    sections: Sequence[Section], directory: str | Path, *, scale: float = 1.5
) -> tuple[list[Path], str | None]:
    """Write every figure of ``sections`` as a PNG (kaleido) into ``directory``, atomically per file. PNGs an
    earlier export left there under the same naming (``<section>_<figure>_<title>.png``) that this one does not
    write again are removed, so the folder holds one export; other files are left alone.

    Static export needs a Chromium for kaleido (``BROWSER_PATH`` or one on ``PATH``). Without one the
    export is skipped: returns ``([], reason)`` and the HTML report is unaffected.

    Example:
        >>> paths, skipped = export_figures(sections, "runs/default/figures")  # doctest: +SKIP
    """
    directory = Path(directory)
    figures, paths = [], []
    for s_index, section in enumerate(sections):
        for f_index, figure in enumerate(section.figures):
            title = figure.layout.title.text or section.title
            figures.append(figure)
            paths.append(directory / f"{s_index:02d}_{f_index}_{_slug(title)[:60]}.png")
    if not figures:
        return [], None
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".png-"))  # same filesystem: os.replace is atomic
    staged = [staging / path.name for path in paths]
    try:
        try:
            # one browser session for every figure (a to_image call per figure starts Chromium each time)
            pio.write_images(figures, staged, format="png", scale=scale)
        except Exception:  # kaleido raises several types when no browser can be started
            if not (bundled_renderer_dir() / "kaleido").is_dir():
                raise
            _render_with_bundled_chromium(figures, staged, scale)
        for tmp, path in zip(staged, paths):
            os.replace(tmp, path)
        # an earlier export into this folder numbered its figures the same way: drop the ones this one replaces
        # (a figure whose title changed, or more figures then than now), so the folder shows one export
        ours = {path.name for path in paths}
        for old in directory.glob("*.png"):
            if _EXPORT_NAME.fullmatch(old.name) and old.name not in ours:
                old.unlink()
    except Exception as err:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        message = str(err).strip()
        cause = f"{type(err).__name__}: {message.splitlines()[0][:200]}" if message else type(err).__name__
        return [], (
            f"PNG export skipped ({cause}); "
            "install Chromium (e.g. apt-get install chromium) or set BROWSER_PATH, or run "
            "bash scripts/install_png_renderer.sh (kaleido 0.2.1's bundled Chromium, from PyPI)"
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths, None
