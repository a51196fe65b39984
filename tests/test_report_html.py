"""welfare_axis.report: the self-contained HTML and the PNG export of its figures."""

from __future__ import annotations

import plotly.graph_objects as go
import plotly.io as pio

from welfare_axis.report import Section, Table, export_figures, render_report


def _sections() -> list[Section]:
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.1, -0.5, -0.9]), layout={"title": {"text": "cos by layer"}})
    return [Section("Geometry", text="a", tables=[Table("t", [{"layer": 0, "cos": -0.5}])], figures=[fig])]


def test_render_report_is_self_contained_and_has_every_part():
    html = render_report("study", _sections(), notes=["FAST MODE"])
    assert "<script src" not in html and "plotly-graph-div" in html
    assert "Geometry" in html and "FAST MODE" in html and "-0.5" in html


def test_export_figures_writes_one_png_per_figure_or_says_why_not(tmp_path):
    written, skipped = export_figures(_sections(), tmp_path / "figures")
    if skipped is None:
        assert [p.name for p in written] == ["00_0_cos_by_layer.png"]
        assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:  # no Chromium on this machine: nothing half-written, and the reason names the fix
        assert written == [] and "Chromium" in skipped
        assert not list((tmp_path / "figures").glob("*")) if (tmp_path / "figures").exists() else True


def test_export_without_a_browser_skips_cleanly(tmp_path, monkeypatch):
    def no_browser(*args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome to be installed.\nmore")

    monkeypatch.setattr(pio, "write_images", no_browser)
    monkeypatch.setenv("WELFARE_AXIS_PNG_RENDERER", str(tmp_path / "no-renderer"))
    written, skipped = export_figures(_sections(), tmp_path / "figures")
    assert written == [] and not (tmp_path / "figures").exists()
    assert "RuntimeError: Kaleido requires Google Chrome" in skipped and "BROWSER_PATH" in skipped
    assert "scripts/install_png_renderer.sh" in skipped


def test_an_error_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    def no_browser(*args, **kwargs):
        raise RuntimeError()  # kaleido's failure to start a browser can carry no text

    monkeypatch.setattr(pio, "write_images", no_browser)
    monkeypatch.setenv("WELFARE_AXIS_PNG_RENDERER", str(tmp_path / "no-renderer"))
    written, skipped = export_figures(_sections(), tmp_path / "figures")
    assert written == [] and skipped.startswith("PNG export skipped (RuntimeError); install Chromium")


def test_without_a_browser_the_bundled_chromium_renders(tmp_path, monkeypatch):
    import welfare_axis.report as report

    def no_browser(*args, **kwargs):
        raise RuntimeError("Kaleido requires Google Chrome to be installed.")

    rendered = []

    def bundled(figures, paths, scale):
        rendered.append((len(figures), scale))
        for path in paths:
            path.write_bytes(b"\x89PNG\r\n\x1a\n")

    (tmp_path / "renderer" / "kaleido").mkdir(parents=True)
    monkeypatch.setenv("WELFARE_AXIS_PNG_RENDERER", str(tmp_path / "renderer"))
    monkeypatch.setattr(pio, "write_images", no_browser)
    monkeypatch.setattr(report, "_render_with_bundled_chromium", bundled)
    written, skipped = export_figures(_sections(), tmp_path / "figures", scale=2.0)
    assert skipped is None and rendered == [(1, 2.0)]
    assert [p.name for p in written] == ["00_0_cos_by_layer.png"] and not list(
        (tmp_path / "figures").glob(".png-*")
    )


def test_export_replaces_an_earlier_export_in_the_same_folder(tmp_path, monkeypatch):
    # figures of an earlier export that this one does not write again are removed; other files stay
    def fake_png(figures, paths, **kwargs):
        for path in paths:
            path.write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(pio, "write_images", fake_png)
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "00_0_cos_by_layer.png").write_bytes(b"old")
    (folder / "00_3_a_figure_there_is_no_longer.png").write_bytes(b"old")
    (folder / "notes.png").write_bytes(b"mine")
    (folder / "README.md").write_text("mine")
    written, skipped = export_figures(_sections(), folder)
    assert skipped is None and [p.name for p in written] == ["00_0_cos_by_layer.png"]
    assert sorted(p.name for p in folder.iterdir()) == ["00_0_cos_by_layer.png", "README.md", "notes.png"]
    assert (folder / "00_0_cos_by_layer.png").read_bytes().startswith(b"\x89PNG")
