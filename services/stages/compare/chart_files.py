"""The Compare charts as image files, as seeds 001/002 left them in `reports/` (`*_category_distribution.png`,
`combined_category_distribution.png`, `normalized_category_distribution.png`), drawn from the same plotly
figures as the page and the HTML report. Rendering goes through kaleido, which drives the machine's Chromium."""

from __future__ import annotations

import logging
from pathlib import Path

import plotly.graph_objects as go

from services.core.errors import WorkbenchError
from services.core.names import file_name
from services.stages.compare.label_sets import Comparison
from services.stages.compare.report import COLOURS, counts_figure, difference_figure, grouped_figure

log = logging.getLogger(__name__)

CHART_FORMATS = ("png", "svg")


class ChartRenderError(WorkbenchError):
    """A chart could not be drawn to a file (most often: no Chromium for kaleido); the message says the fix."""

    error_class = "chart_render"


def chart_figures(c: Comparison) -> dict[str, go.Figure]:
    """The seeds' charts by file stem: each set's counts, both sets side by side, as shares, the differences."""
    counts_a = {s.category: s.count_a for s in c.categories if s.count_a}
    counts_b = {s.category: s.count_b for s in c.categories if s.count_b}
    return {
        file_name(c.a.name, "_category_distribution"): counts_figure(c.a.name, counts_a, c.n_a, COLOURS["a"]),
        file_name(c.b.name, "_category_distribution"): counts_figure(c.b.name, counts_b, c.n_b, COLOURS["b"]),
        "combined_category_distribution": grouped_figure(c),
        "normalized_category_distribution": grouped_figure(c, normalised=True),
        "category_differences": difference_figure(c),
    }


def write_chart_files(c: Comparison, folder: Path, fmt: str = "png") -> list[Path]:
    """Every chart of `chart_figures` as `folder/<stem>.<fmt>`; returns the files."""
    if fmt not in CHART_FORMATS:
        raise ChartRenderError(f"chart format {fmt!r}: use one of {', '.join(CHART_FORMATS)}")
    folder.mkdir(parents=True, exist_ok=True)
    figures = chart_figures(c)
    written = [folder / f"{stem}.{fmt}" for stem in figures]
    import plotly.io as pio

    try:  # one kaleido session for every chart (a browser started once, not once per chart)
        pio.write_images(list(figures.values()), [str(p) for p in written], format=fmt, width=1200, height=600)
    except Exception as exc:  # kaleido's errors are its own classes and RuntimeErrors from choreographer
        log.debug("kaleido failed in %s", folder, exc_info=True)
        raise ChartRenderError(
            f"could not draw the charts: {type(exc).__name__}: {str(exc)[:200]}. kaleido draws with "
            "Chromium: install it (`apt-get install chromium`) or point BROWSER_PATH at a Chrome or Chromium"
        ) from None
    return written


def chart_zip(c: Comparison, fmt: str = "png") -> bytes:
    """Every chart file in one zip (what the Compare page offers to download)."""
    import io
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory() as tmp:
        files = write_chart_files(c, Path(tmp), fmt)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, f.name)
    return buffer.getvalue()
