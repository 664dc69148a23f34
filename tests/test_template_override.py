"""``[paths] templates`` names an override folder whose files take precedence one by one over the
packaged templates: pages, their static files and e-mails; what the folder lacks comes from the
package (issue 16, item 1)."""

from __future__ import annotations

from collections.abc import Callable

from notifier.config import PACKAGED_TEMPLATES

from .conftest import Project, Web

NOTE = '+++\nsubject = "Vorlagen"\nsend_at = "now"\n+++\nText der Mitteilung.\n'


def test_override_files_win_one_by_one_and_the_package_serves_the_rest(
    web: Callable[..., Web], project: Project
) -> None:
    override = project.root / "amt"
    (override / "web" / "public").mkdir(parents=True)
    (override / "web" / "static").mkdir(parents=True)
    (override / "email").mkdir(parents=True)
    # A page template of the office's that extends the packaged base.html.
    (override / "web" / "public" / "legal.html").write_text(
        '{% extends "base.html" %}{% block content %}<p>AMTSVORLAGE</p>{{ body }}{% endblock %}',
        "utf-8",
    )
    (override / "web" / "static" / "amt.css").write_text("body { color: #123456 }\n", "utf-8")
    # The e-mails' frame changed; announcement.html (which extends it) stays packaged.
    base = (PACKAGED_TEMPLATES / "email" / "base.html").read_text("utf-8")
    assert "</body>" in base
    (override / "email" / "base.html").write_text(
        base.replace("</body>", "<p>Vom Amt angepasst</p></body>"), "utf-8"
    )

    site = web({"paths": {"templates": "amt"}})

    privacy = site.client.get("/datenschutz")
    assert privacy.status_code == 200
    assert "<p>AMTSVORLAGE</p>" in privacy.text
    assert "<h1>Datenschutzerklärung</h1>" in privacy.text
    assert 'href="/barrierefreiheit"' in privacy.text  # the packaged base.html's footer
    signup = site.client.get("/anmelden")
    assert signup.status_code == 200
    assert "AMTSVORLAGE" not in signup.text
    assert site.client.get("/static/amt.css").text == "body { color: #123456 }\n"
    packaged_css = (PACKAGED_TEMPLATES / "web" / "static" / "site.css").read_text("utf-8")
    assert site.client.get("/static/site.css").text == packaged_css

    project.cli("announce", project.write("a.md", NOTE))
    received = project.smtp.wait_for(1, timeout=30)
    html = received[0].message.get_body(("html",))
    assert html is not None
    content = html.get_content()
    assert "Vom Amt angepasst" in content
    assert "Text der Mitteilung." in content
