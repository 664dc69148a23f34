"""The SVG charts (issue 17, item 2): well-formed, named by title and description, the numbers
in a table, nothing the strict CSP forbids, bars and lines where the numbers put them."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from notifier.web.charts import HEIGHT, TOP, Chart, Series, nice_ceiling, render

SVG = "{http://www.w3.org/2000/svg}"
BOTTOM_Y = HEIGHT - 40  # the x axis (BOTTOM = 40)


def _tree(chart: Chart) -> ET.Element:
    html = str(render(chart))
    # The HTML of a chart is also well-formed XML: parse it whole.
    return ET.fromstring(html.replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))


def test_a_stacked_chart_is_accessible_and_draws_its_numbers() -> None:
    chart = Chart(
        ident="versand",
        title="Nachrichten je Tag <alle>",
        description="Gestapelt: versandt & fehlgeschlagen",
        labels=["01.12.", "02.12.", "03.12."],
        series=[Series("versandt", [10, 0, 30]), Series("fehlgeschlagen", [5, 0, 10])],
        kind="stacked",
    )
    html = str(render(chart))
    assert "style=" not in html and "<script" not in html and "<style" not in html
    assert "&lt;alle&gt;" in html and "&amp;" in html  # text is escaped
    root = _tree(chart)
    svg = root.find(f"{SVG}svg")
    assert svg is not None and svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "versand-titel versand-beschreibung"
    assert svg.findtext(f"{SVG}title") == "Nachrichten je Tag <alle>"
    assert svg.findtext(f"{SVG}desc") == "Gestapelt: versandt & fehlgeschlagen"
    # The numbers as a table inside <details>, one row per day.
    rows = [[c.text for c in tr] for tr in root.iter("tr")]
    assert rows == [
        ["Tag", "versandt", "fehlgeschlagen"],
        ["01.12.", "10", "5"],
        ["02.12.", "0", "0"],
        ["03.12.", "30", "10"],
    ]
    assert root.find("details/summary") is not None
    # The y axis goes to 40 (the highest stack); the bars of a day stack without a gap, and a
    # zero draws nothing.
    rects = svg.findall(f"{SVG}rect")
    assert [r.get("class") for r in rects] == ["chart-s0", "chart-s1", "chart-s0", "chart-s1"]
    heights = [float(r.get("height") or 0) for r in rects]
    plot = BOTTOM_Y - TOP
    assert heights == pytest.approx(
        [plot * 10 / 40, plot * 5 / 40, plot * 30 / 40, plot * 10 / 40], abs=0.1
    )
    third_top = float(rects[2].get("y") or 0)
    fourth = rects[3]
    assert float(fourth.get("y") or 0) + float(fourth.get("height") or 0) == pytest.approx(
        third_top, abs=0.1
    )
    assert float(rects[2].get("y") or 0) + heights[2] == pytest.approx(BOTTOM_Y, abs=0.1)


def test_a_line_chart_puts_its_points_at_the_values() -> None:
    chart = Chart(
        ident="verlauf",
        title="Abonnenten",
        description="Linie",
        labels=["a", "b"],
        series=[Series("aktiv", [0, 5])],
        kind="line",
    )
    svg = _tree(chart).find(f"{SVG}svg")
    assert svg is not None
    ys = [float(c.get("cy") or 0) for c in svg.findall(f"{SVG}circle")]
    assert ys == pytest.approx([BOTTOM_Y, TOP], abs=0.1)
    assert svg.find(f"{SVG}polyline") is not None


def test_scale_and_checks() -> None:
    assert nice_ceiling(0) == (1, 1)
    assert nice_ceiling(7) == (8, 2)
    assert nice_ceiling(40) == (40, 10)
    assert nice_ceiling(1234) == (1500, 500)
    with pytest.raises(ValueError, match="2 values, 3 labels"):
        Chart("x", "t", "d", ["a", "b", "c"], [Series("s", [1, 2])])
    with pytest.raises(ValueError, match="ident"):
        Chart('x" onload="', "t", "d", [], [])
    empty = str(render(Chart("leer", "Leer", "Nichts", [], [Series("s", [])])))
    assert re.search(r"<tbody></tbody>", empty)
