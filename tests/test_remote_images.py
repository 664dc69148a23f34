"""Remote images in announcements: refused when scheduled (CLI, office console, API) with a
German error naming the host, unless ``[mail] image_hosts`` lists it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing

import httpx
import pytest

from notifier.config import load_settings
from notifier.errors import ConfigError, RemoteImageError
from notifier.remote_images import check_remote_images, remote_image_hosts

from .conftest import Project, Web

USER, PASSWORD = "buero", "ein-langes-passwort"


@pytest.mark.parametrize(
    ("text", "hosts"),
    [
        ("![Logo](https://Bilder.Example.org/logo.png)", ["bilder.example.org"]),
        ('![x](http://a.example:8080/p.gif "Titel")', ["a.example"]),
        ("![x](//proto.example/p.gif)", ["proto.example"]),
        ("[![x](https://inner.example/a.png)](https://link.example/)", ["inner.example"]),
        ("![x][logo]\n\n[logo]: https://ref.example/l.png", ["ref.example"]),
        ('<img src="https://raw.example/a.png">', ["raw.example"]),
        ("<IMG SRC=//upper.example/a.png>", ["upper.example"]),
        ('<img srcset="a.png 1x, https://set.example/b.png 2x">', ["set.example"]),
        ('<div style="background: url(https://css.example/x.png)">', ["css.example"]),
        ("<img src='https:\\\\back.example/x.png'>", ["back.example"]),
        # Links, relative and embedded images load nothing from another host.
        ("[Programm](https://www.eifelkreis.example/programm.pdf)", []),
        ('<a href="https://www.eifelkreis.example/">x</a> ![a](bild.png)', []),
        ("![p](data:image/png;base64,iVBORw0KGgo=) ![c](cid:logo)", []),
    ],
)
def test_remote_image_hosts_are_found_in_markdown_and_html(text: str, hosts: list[str]) -> None:
    assert remote_image_hosts(text) == hosts


def test_listed_hosts_pass_and_the_error_names_the_others() -> None:
    text = "![a](https://ok.example/a.png) ![b](https://tracker.example/b.png)"
    check_remote_images(text, ["ok.example", "tracker.example"])
    with pytest.raises(RemoteImageError) as refused:
        check_remote_images(text, ["ok.example"])
    assert refused.value.hosts == ["tracker.example"]
    assert "fremden Rechner (tracker.example)" in str(refused.value)
    assert "[mail] image_hosts (derzeit: ok.example)" in str(refused.value)


def test_image_hosts_must_be_host_names(project: Project) -> None:
    project.write_config({"mail": {"image_hosts": ["Bilder.Example.org."]}})
    assert project.settings.mail.image_hosts == ["bilder.example.org"]
    project.write_config({"mail": {"image_hosts": ["https://bilder.example.org/x"]}})
    with pytest.raises(ConfigError) as bad:
        load_settings(project.config, environ={})
    assert "image_hosts" in str(bad.value) and "https://bilder.example.org/x" in str(bad.value)


def _items(project: Project) -> int:
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db:
        count: int = db.execute("SELECT count(*) FROM items").fetchone()[0]
        return count


def test_announce_refuses_a_remote_image_unless_its_host_is_listed(project: Project) -> None:
    project.seed()
    file = project.write(
        "bild.md",
        '+++\nsubject = "Mit Bild"\nsend_at = "now"\n+++\n'
        "Unser neues Logo:\n\n![Logo](https://bilder.example.org/logo.png)\n",
    )
    for args in ([file], [file, "--dry-run"]):
        result = project.cli("announce", *args, ok=False)
        assert result.exit_code == 1, result.output
        [line] = result.stderr.splitlines()
        assert line.startswith("Fehler: Der Text lädt Bilder von einem fremden Rechner "), line
        assert "(bilder.example.org)" in line and "derzeit: keine" in line
    assert _items(project) == 0

    project.write_config({"mail": {"image_hosts": ["bilder.example.org"]}})
    project.cli("announce", file)
    assert _items(project) == 1


def test_office_and_api_refuse_a_remote_image(web: Callable[..., Web], project: Project) -> None:
    site = web()
    project.cli("users", "add", USER, "--password", PASSWORD)
    token = site.csrf("/buero/anmelden")
    site.client.post(
        "/buero/anmelden", data={"name": USER, "password": PASSWORD, "csrf_token": token}
    )
    body = 'Hallo\n\n<img src="//zaehlpixel.example/p.gif" alt="">'
    form = "/buero/mitteilungen/neu"
    data = {"subject": "Pixel", "body": body, "action": "planen", "csrf_token": site.csrf(form)}
    refused = site.client.post(form, data=data)
    assert refused.status_code == 422, refused.text
    assert "Der Text lädt Bilder von einem fremden Rechner (zaehlpixel.example)" in refused.text
    # Without the form's token nothing is checked or stored.
    assert site.client.post(form, data={**data, "csrf_token": "x"}).status_code == 403

    key = project.cli("tokens", "add", "cms").stdout.splitlines()[0]
    with httpx.Client(
        base_url=site.url("/api/v1"), headers={"Authorization": f"Bearer {key}"}, timeout=15
    ) as api:
        answer = api.post("/announcements", json={"subject": "Pixel", "body": body})
        assert answer.status_code == 422, answer.text
        problems = {e["loc"][-1]: e["msg"] for e in answer.json()["detail"]}
        assert list(problems) == ["body"] and "zaehlpixel.example" in problems["body"]
        assert api.post("/announcements", json={"subject": "Ohne", "body": "Text"}).is_success
    assert _items(project) == 1
