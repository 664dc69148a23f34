"""Charts as server-rendered SVG: no JavaScript, nothing from another host, nothing the strict
CSP forbids (no ``style`` attributes, no ``<style>`` or ``<script>`` element: colours and fonts
come from classes in ``static/charts.css``).

Every chart is a ``<figure>``: an ``<svg role="img">`` named by its ``<title>`` and ``<desc>``, a
legend, and the same numbers as a table in a ``<details>`` element, so a screen reader (or
anyone) can read them instead of looking.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from markupsafe import Markup, escape

__all__ = ["Chart", "Series", "render"]

# Drawing area in SVG units; the SVG scales to the width of its container.
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 40
# Series colours: classes chart-s0 … chart-s3 in charts.css (each at least 3:1 on white).
PALETTE = 4


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[int]


@dataclass(frozen=True)
class Chart:
    """``kind``: ``bars`` (series side by side), ``stacked`` (series on top of each other) or
    ``line``. ``labels`` name the points of the x axis; every series has one value per label.
    ``ident`` must be unique on the page (it makes the ids of title and description)."""

    ident: str
    title: str
    description: str
    labels: Sequence[str]
    series: Sequence[Series]
    kind: Literal["bars", "stacked", "line"] = "bars"
    label_header: str = "Tag"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", self.ident):
            raise ValueError(f"chart ident {self.ident!r}: lower-case letters, digits, '-'")
        for s in self.series:
            if len(s.values) != len(self.labels):
                raise ValueError(
                    f"series {s.label!r}: {len(s.values)} values, {len(self.labels)} labels"
                )


def nice_ceiling(value: int) -> tuple[int, int]:
    """The top of the y axis for a largest value, and the step of its ticks (1, 2 or 5 × 10ⁿ,
    at most five steps)."""
    if value <= 0:
        return 1, 1
    raw = value / 4
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for factor in (1, 2, 5, 10):
        step = max(1, int(factor * magnitude))
        if step * 5 >= value:
            return step * math.ceil(value / step), step
    return value, value  # not reached: factor 10 always fits


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _german(value: int) -> str:
    return f"{value:,}".replace(",", ".")


def _top(chart: Chart) -> int:
    if not chart.series or not chart.labels:
        return 0
    if chart.kind == "stacked":
        return max(sum(s.values[i] for s in chart.series) for i in range(len(chart.labels)))
    return max(max(s.values) for s in chart.series)


def _svg(chart: Chart) -> str:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top, step = nice_ceiling(_top(chart))
    n = max(len(chart.labels), 1)
    slot = plot_w / n

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="{chart.ident}-titel {chart.ident}-beschreibung" '
        f'preserveAspectRatio="xMidYMid meet">',
        f'<title id="{chart.ident}-titel">{escape(chart.title)}</title>',
        f'<desc id="{chart.ident}-beschreibung">{escape(chart.description)}</desc>',
    ]
    for tick in range(0, top + 1, step):
        ty = _number(y(tick))
        parts.append(
            f'<line class="chart-grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty}" y2="{ty}"/>'
            f'<text class="chart-tick" x="{LEFT - 6}" y="{ty}" text-anchor="end" '
            f'dominant-baseline="middle">{_german(tick)}</text>'
        )
    # At most about twelve labels on the x axis, counted back from the last (the newest).
    every = max(1, math.ceil(n / 12))
    for i, label in enumerate(chart.labels):
        if (n - 1 - i) % every == 0:
            tx = _number(LEFT + slot * (i + 0.5))
            parts.append(
                f'<text class="chart-tick" x="{tx}" y="{HEIGHT - BOTTOM + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    if chart.kind == "line":
        for index, s in enumerate(chart.series):
            points = " ".join(
                f"{_number(LEFT + slot * (i + 0.5))},{_number(y(v))}"
                for i, v in enumerate(s.values)
            )
            css = f"chart-s{index % PALETTE}"
            parts.append(f'<polyline class="chart-line {css}" fill="none" points="{points}"/>')
            for i, v in enumerate(s.values):
                parts.append(
                    f'<circle class="{css}" cx="{_number(LEFT + slot * (i + 0.5))}" '
                    f'cy="{_number(y(v))}" r="3"/>'
                )
    else:
        for i in range(len(chart.labels)):
            base = 0
            for index, s in enumerate(chart.series):
                value = s.values[i]
                if chart.kind == "stacked":
                    width = slot * 0.7
                    x = LEFT + slot * i + slot * 0.15
                    y_top, y_bottom = y(base + value), y(base)
                    base += value
                else:
                    width = slot * 0.8 / len(chart.series)
                    x = LEFT + slot * i + slot * 0.1 + width * index
                    y_top, y_bottom = y(value), y(0)
                if value:
                    parts.append(
                        f'<rect class="chart-s{index % PALETTE}" x="{_number(x)}" '
                        f'y="{_number(y_top)}" width="{_number(width)}" '
                        f'height="{_number(y_bottom - y_top)}"/>'
                    )
    parts.append(
        f'<line class="chart-axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
        f'y1="{TOP + plot_h}" y2="{TOP + plot_h}"/>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _legend(chart: Chart) -> str:
    items = "".join(
        f'<li><svg class="chart-key" viewBox="0 0 10 10" aria-hidden="true" focusable="false">'
        f'<rect class="chart-s{index % PALETTE}" width="10" height="10"/></svg>'
        f"{escape(s.label)}</li>"
        for index, s in enumerate(chart.series)
    )
    return f'<ul class="chart-legend" aria-hidden="true">{items}</ul>'


def _table(chart: Chart) -> str:
    head = "".join(f'<th scope="col">{escape(s.label)}</th>' for s in chart.series)
    rows = "".join(
        f'<tr><th scope="row">{escape(label)}</th>'
        + "".join(f"<td>{_german(s.values[i])}</td>" for s in chart.series)
        + "</tr>"
        for i, label in enumerate(chart.labels)
    )
    return (
        f'<details><summary>Zahlen als Tabelle<span class="visually-hidden">: '
        f"{escape(chart.title)}</span></summary>"
        f'<div class="table-wrap" tabindex="0" role="region" aria-label="Zahlen: '
        f'{escape(chart.title)}"><table><caption class="visually-hidden">{escape(chart.title)}'
        f'</caption><thead><tr><th scope="col">{escape(chart.label_header)}</th>{head}</tr>'
        f"</thead><tbody>{rows}</tbody></table></div></details>"
    )


def render(chart: Chart) -> Markup:
    """The chart as HTML: figure, SVG, legend and the numbers as a table."""
    return Markup(  # noqa: S704 - every text in it is escaped above
        f'<figure class="chart" id="{chart.ident}">'
        f'<figcaption class="chart-caption">{escape(chart.title)}</figcaption>'
        f"{_svg(chart)}{_legend(chart)}{_table(chart)}</figure>"
    )
