"""``notifier organisations load`` (the Kreis → VG → Ortsgemeinde tree) and scope: who an
announcement reaches, seen through ``notifier announce --dry-run``."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from .conftest import ORGANISATIONS, Project

KREIS = "07232"
VG_PRUEM = "072325006"
VG_BITBURGER_LAND = "072325008"
VG_SPEICHER = "072325007"
BITBURG = "07232018"
OG_PRUEM = "07232296"
SCHOENECKEN = "07232304"

# One subscriber per place the brief names; topics chosen for the topic filters below.
AUDIENCE = """email,name,role,organisation,topics,rhythm
vg.pruem@gemeinde.example,Vera Prüm,staff,Verbandsgemeinde Prüm,,immediate
og.pruem@gemeinde.example,Otto Prüm,mayor,07232296,mobilitaet,immediate
schoenecken@gemeinde.example,Sonja Schönecken,mayor,Schönecken,versorgung;eifelleben,daily
bitburg@gemeinde.example,Bernd Bitburg,staff,Bitburg,strategie,immediate
kreis@gemeinde.example,Klara Kreis,staff,07232,,weekly
vg.bitland@gemeinde.example,Lena Land,staff,Verbandsgemeinde Bitburger Land,mobilitaet,immediate
"""


def query(project: Project, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db:
        return db.execute(sql, params).fetchall()


def org_lines() -> list[str]:
    """The real organisations file, line by line (without line ends)."""
    return ORGANISATIONS.read_text("utf-8").splitlines()


def write_orgs(project: Project, name: str, lines: list[str]) -> Path:
    return project.write(name, "\r\n".join(lines) + "\r\n")


def replace_line(lines: list[str], key: str, new: str | None) -> list[str]:
    """Replace (or with None: remove) the line of unit ``key``."""
    hits = [i for i, line in enumerate(lines) if line.startswith(f"{key},")]
    assert len(hits) == 1, key
    out = list(lines)
    if new is None:
        del out[hits[0]]
    else:
        out[hits[0]] = new
    return out


def tree_rows(project: Project) -> list[tuple[Any, ...]]:
    return query(
        project, "SELECT id, key, name, kind, parent_id, path, depth FROM organisations ORDER BY id"
    )


def exported_orgs(project: Project) -> dict[str, str]:
    """email → organisation key, from ``notifier subscribers export``."""
    text = project.cli("subscribers", "export").output
    return {line.split(",")[0]: line.split(",")[3] for line in text.splitlines()[1:]}


def announcement(project: Project, front: str, name: str = "mitteilung.md") -> Path:
    return project.write(name, f'+++\nsubject = "Test"\n{front}send_at = "now"\n+++\nText\n')


def recipients(project: Project, front: str = "") -> int:
    """``Empfänger: N`` of a dry run of an announcement with the given front-matter lines."""
    result = project.cli("announce", "--dry-run", announcement(project, front))
    assert "Probelauf: nichts geplant." in result.output
    match = re.search(r"^Empfänger: (\d+)$", result.output, re.MULTILINE)
    assert match, result.output
    return int(match.group(1))


@pytest.fixture
def people(project: Project) -> Project:
    """The real tree and the six subscribers of AUDIENCE."""
    project.cli("organisations", "load", ORGANISATIONS)
    project.cli("subscribers", "import", project.write("audience.csv", AUDIENCE))
    return project


# --- loading the tree -------------------------------------------------------------------------


def test_real_file_loads(project: Project) -> None:
    result = project.cli("organisations", "load", ORGANISATIONS)

    assert f"{ORGANISATIONS}: 239 neu, 0 geändert, 0 entfernt." in result.output
    kinds = dict(query(project, "SELECT kind, count(*) FROM organisations GROUP BY kind"))
    assert kinds == {"kreis": 1, "verbandsgemeinde": 5, "stadt": 1, "ortsgemeinde": 232}
    paths = dict(query(project, "SELECT key, path FROM organisations"))
    assert paths[KREIS] == "/07232/"
    assert paths[VG_PRUEM] == "/07232/072325006/"
    assert paths[BITBURG] == "/07232/07232018/"
    assert paths[SCHOENECKEN] == "/07232/072325006/07232304/"
    # Every unit's path is its parent's path plus its own key.
    parents = query(
        project,
        "SELECT c.path, c.key, c.depth, p.path, p.depth FROM organisations c "
        "JOIN organisations p ON p.id = c.parent_id",
    )
    assert len(parents) == 238
    assert all(c == f"{p}{key}/" and cd == pd + 1 for c, key, cd, p, pd in parents)
    assert query(project, "SELECT count(*) FROM audit_log WHERE action = 'organisations.sync'") == [
        (1,)
    ]


def test_second_load_changes_nothing(project: Project) -> None:
    project.cli("organisations", "load", ORGANISATIONS)
    before = tree_rows(project)
    audit = query(project, "SELECT count(*) FROM audit_log")

    result = project.cli("organisations", "load", ORGANISATIONS)

    assert f"{ORGANISATIONS}: keine Änderungen." in result.output
    assert tree_rows(project) == before
    assert query(project, "SELECT count(*) FROM audit_log") == audit


def test_if_empty_leaves_a_loaded_tree_alone(project: Project) -> None:
    project.cli("organisations", "load", ORGANISATIONS)
    lines = replace_line(org_lines(), SCHOENECKEN, None)

    result = project.cli("organisations", "load", "--if-empty", write_orgs(project, "o.csv", lines))

    assert "schon geladen" in result.output
    assert query(project, "SELECT count(*) FROM organisations") == [(239,)]


def test_renamed_unit_keeps_its_subscribers(people: Project) -> None:
    lines = replace_line(
        org_lines(), OG_PRUEM, f"{OG_PRUEM},Prüm (Stadt),ortsgemeinde,Verbandsgemeinde Prüm"
    )

    result = people.cli("organisations", "load", write_orgs(people, "renamed.csv", lines))

    assert "0 neu, 1 geändert, 0 entfernt." in result.output
    assert query(people, "SELECT name, path FROM organisations WHERE key = ?", OG_PRUEM) == [
        ("Prüm (Stadt)", "/07232/072325006/07232296/")
    ]
    assert exported_orgs(people)["og.pruem@gemeinde.example"] == OG_PRUEM
    assert query(people, "SELECT count(*) FROM audit_log WHERE action = 'subscriber.moved'") == [
        (0,)
    ]
    # The new name works in files from now on, the old one no longer does.
    assert recipients(people, 'scope = ["Prüm (Stadt)"]\n') == 1
    old_name = announcement(people, 'scope = ["Prüm"]\n')
    result = people.cli("announce", "--dry-run", old_name, ok=False)
    assert result.exit_code == 1
    assert "Zeile 3, Spalte 'scope'" in result.output


def test_removed_ortsgemeinde_moves_its_subscribers_to_the_vg(people: Project) -> None:
    lines = replace_line(org_lines(), SCHOENECKEN, None)

    result = people.cli("organisations", "load", write_orgs(people, "removed.csv", lines))

    assert "0 neu, 0 geändert, 1 entfernt." in result.output
    assert (
        f"schoenecken@gemeinde.example: von {SCHOENECKEN} nach {VG_PRUEM} verschoben"
        in result.output
    )
    assert query(people, "SELECT count(*) FROM organisations WHERE key = ?", SCHOENECKEN) == [(0,)]
    orgs = exported_orgs(people)
    assert orgs["schoenecken@gemeinde.example"] == VG_PRUEM
    assert orgs["og.pruem@gemeinde.example"] == OG_PRUEM  # others stay where they are
    moved = query(
        people,
        "SELECT a.entity, a.entity_id, a.details FROM audit_log a "
        "WHERE a.action = 'subscriber.moved'",
    )
    assert len(moved) == 1
    entity, entity_id, details = moved[0]
    (subscriber_id,) = query(
        people, "SELECT id FROM subscribers WHERE email = 'schoenecken@gemeinde.example'"
    )[0]
    assert (entity, entity_id) == ("subscriber", str(subscriber_id))
    assert json.loads(details)["from"] == SCHOENECKEN
    assert json.loads(details)["to"] == VG_PRUEM
    # Still reached through the VG, and only once.
    assert recipients(people, f'scope = ["{VG_PRUEM}"]\n') == 3


def test_removed_vg_moves_subscribers_up_and_children_with_it(people: Project) -> None:
    """A VG dissolved into another: its Ortsgemeinden get the new parent, its own staff move
    up to the Kreis, the nearest unit that remains."""
    lines = replace_line(org_lines(), VG_BITBURGER_LAND, None)
    lines = [
        line.replace(",Verbandsgemeinde Bitburger Land", ",Verbandsgemeinde Speicher")
        for line in lines
    ]

    result = people.cli("organisations", "load", write_orgs(people, "merged.csv", lines))

    assert "1 entfernt." in result.output
    assert f"vg.bitland@gemeinde.example: von {VG_BITBURGER_LAND} nach {KREIS}" in result.output
    assert exported_orgs(people)["vg.bitland@gemeinde.example"] == KREIS
    assert query(people, "SELECT path FROM organisations WHERE key = '07232070'") == [
        ("/07232/072325007/07232070/",)
    ]


def test_moved_unit_updates_its_path_and_scope_follows(people: Project) -> None:
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm"]\n') == 3
    assert recipients(people, 'scope = ["Verbandsgemeinde Bitburger Land"]\n') == 1
    lines = replace_line(
        org_lines(),
        SCHOENECKEN,
        f"{SCHOENECKEN},Schönecken,ortsgemeinde,Verbandsgemeinde Bitburger Land",
    )

    result = people.cli("organisations", "load", write_orgs(people, "moved.csv", lines))

    assert "0 neu, 1 geändert, 0 entfernt." in result.output
    rows = query(
        people,
        "SELECT c.path, c.depth, p.key FROM organisations c "
        "JOIN organisations p ON p.id = c.parent_id WHERE c.key = ?",
        SCHOENECKEN,
    )
    assert rows == [("/07232/072325008/07232304/", 2, VG_BITBURGER_LAND)]
    assert exported_orgs(people)["schoenecken@gemeinde.example"] == SCHOENECKEN
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm"]\n') == 2
    assert recipients(people, 'scope = ["Verbandsgemeinde Bitburger Land"]\n') == 2


def test_moved_subtree_takes_its_units_along(people: Project) -> None:
    """A VG put under another unit: the paths of all its Ortsgemeinden change with it."""
    lines = replace_line(
        org_lines(),
        VG_PRUEM,
        f"{VG_PRUEM},Verbandsgemeinde Prüm,verbandsgemeinde,Verbandsgemeinde Bitburger Land",
    )

    result = people.cli("organisations", "load", write_orgs(people, "subtree.csv", lines))

    children = sum(line.endswith(",Verbandsgemeinde Prüm") for line in org_lines())
    assert f"0 neu, {children + 1} geändert, 0 entfernt." in result.output
    assert query(people, "SELECT path, depth FROM organisations WHERE key = ?", SCHOENECKEN) == [
        ("/07232/072325008/072325006/07232304/", 3)
    ]
    wrong = query(
        people,
        "SELECT count(*) FROM organisations c JOIN organisations p ON p.id = c.parent_id "
        "WHERE c.path != p.path || c.key || '/' OR c.depth != p.depth + 1",
    )
    assert wrong == [(0,)]
    # VG Bitburger Land now holds its own staff and all three of VG Prüm's people.
    assert recipients(people, 'scope = ["Verbandsgemeinde Bitburger Land"]\n') == 4
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm"]\n') == 3


def test_bad_file_is_refused_whole(people: Project) -> None:
    before = tree_rows(people)
    subscribers = query(people, "SELECT * FROM subscribers ORDER BY id")
    audit = query(people, "SELECT count(*) FROM audit_log")
    # A valid change (a rename, a removal) beside the bad rows must not be applied either.
    lines = replace_line(
        org_lines(), OG_PRUEM, f"{OG_PRUEM},Prüm (Stadt),ortsgemeinde,Verbandsgemeinde Prüm"
    )
    lines = replace_line(lines, SCHOENECKEN, None)
    lines += [
        "07232201,Arzfeld zwei,ortsgemeinde,Verbandsgemeinde Arzfeld",  # 240: duplicate key
        "07239999,Neudorf,dorf,Verbandsgemeinde Arzfeld",  # 241: unknown kind
        "07239998,Altdorf,ortsgemeinde,Verbandsgemeinde Atlantis",  # 242: unknown parent
    ]

    result = people.cli("organisations", "load", write_orgs(people, "bad.csv", lines), ok=False)

    assert result.exit_code == 1
    out = result.output
    assert "3 Fehler, nichts wurde gespeichert" in out
    assert "Zeile 240, Spalte 'key': 07232201 steht schon in Zeile 9" in out
    assert "Zeile 241, Spalte 'kind'" in out
    assert "'dorf'" in out
    assert "Zeile 242, Spalte 'parent'" in out
    assert "'Verbandsgemeinde Atlantis'" in out
    assert tree_rows(people) == before
    assert query(people, "SELECT * FROM subscribers ORDER BY id") == subscribers
    assert query(people, "SELECT count(*) FROM audit_log") == audit


def test_two_roots_are_refused(people: Project) -> None:
    before = tree_rows(people)
    lines = [*org_lines(), "07233,Vulkaneifel,kreis,"]

    result = people.cli("organisations", "load", write_orgs(people, "roots.csv", lines), ok=False)

    assert result.exit_code == 1
    assert "Zeile 241, Spalte 'parent'" in result.output
    assert "gefunden: 2" in result.output
    assert tree_rows(people) == before


def test_cycle_is_refused(project: Project) -> None:
    path = project.write(
        "cycle.csv",
        "key,name,kind,parent\n"
        "07232,Eifelkreis Bitburg-Prüm,kreis,\n"
        "1,Eins,verbandsgemeinde,Zwei\n"
        "2,Zwei,verbandsgemeinde,Eins\n",
    )

    result = project.cli("organisations", "load", path, ok=False)

    assert result.exit_code == 1
    assert "Kreislauf" in result.output
    assert "Zeile 3, Spalte 'parent'" in result.output
    assert query(project, "SELECT count(*) FROM organisations") == [(0,)]


def test_bad_file_on_an_empty_database_stores_nothing(project: Project) -> None:
    lines = [*org_lines(), "07239999,Neudorf,dorf,Verbandsgemeinde Arzfeld"]

    result = project.cli("organisations", "load", write_orgs(project, "bad.csv", lines), ok=False)

    assert result.exit_code == 1
    assert "Zeile 241, Spalte 'kind'" in result.output
    assert query(project, "SELECT count(*) FROM organisations") == [(0,)]
    assert query(project, "SELECT count(*) FROM audit_log") == [(0,)]


# --- scope, roles and topics of announcements -------------------------------------------------


def test_scope_vg_pruem_reaches_its_ortsgemeinden(people: Project) -> None:
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm"]\n') == 3


def test_scope_by_key_works_like_by_name(people: Project) -> None:
    assert recipients(people, f'scope = ["{VG_PRUEM}"]\n') == 3
    assert recipients(people, f'scope = ["{BITBURG}"]\n') == 1
    assert recipients(people, f'scope = ["{OG_PRUEM}"]\n') == 1
    # Name and key of the same unit count it once.
    assert recipients(people, f'scope = ["Verbandsgemeinde Prüm", "{VG_PRUEM}"]\n') == 3


def test_scope_bitburg_is_only_the_town(people: Project) -> None:
    assert recipients(people, 'scope = ["Bitburg"]\n') == 1
    # Bitburg lies in no Verbandsgemeinde: Bitburger Land has only its own staff member.
    assert recipients(people, 'scope = ["Verbandsgemeinde Bitburger Land"]\n') == 1


def test_scope_of_several_units_adds_up(people: Project) -> None:
    assert recipients(people, 'scope = ["Bitburg", "Verbandsgemeinde Prüm"]\n') == 4
    # An Ortsgemeinde inside a VG already in scope is not counted twice.
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm", "Schönecken"]\n') == 3


def test_no_scope_reaches_everybody(people: Project) -> None:
    assert recipients(people) == 6
    assert recipients(people, f'scope = ["{KREIS}"]\n') == 6
    assert recipients(people, "scope = []\n") == 6


def test_unsubscribed_people_are_not_counted(people: Project) -> None:
    with closing(sqlite3.connect(people.root / "var" / "test.db")) as db, db:
        db.execute(
            "UPDATE subscribers SET status = 'unsubscribed' WHERE email = ?",
            ("og.pruem@gemeinde.example",),
        )

    assert recipients(people) == 5
    assert recipients(people, 'scope = ["Verbandsgemeinde Prüm"]\n') == 2


def test_unknown_scope_is_refused_with_line_and_field(people: Project) -> None:
    path = announcement(people, 'scope = ["Verbandsgemeinde Prüm", "Atlantis"]\n')

    result = people.cli("announce", "--dry-run", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 3, Spalte 'scope': 'Atlantis'" in result.output
    assert "Empfänger" not in result.output


def test_roles_filter(people: Project) -> None:
    assert recipients(people, 'roles = ["mayor"]\n') == 2
    assert recipients(people, 'roles = ["staff"]\n') == 4
    assert recipients(people, 'roles = ["mayor", "staff"]\n') == 6
    assert recipients(people, 'roles = ["deputy_mayor"]\n') == 0
    assert recipients(people, 'roles = ["mayor"]\nscope = ["Verbandsgemeinde Prüm"]\n') == 2
    assert recipients(people, 'roles = ["staff"]\nscope = ["Verbandsgemeinde Prüm"]\n') == 1


def test_unknown_role_is_refused(people: Project) -> None:
    result = people.cli(
        "announce", "--dry-run", announcement(people, 'roles = ["landrat"]\n'), ok=False
    )

    assert result.exit_code == 1
    assert "Zeile 3, Spalte 'roles'" in result.output


def test_topics_filter(people: Project) -> None:
    # versorgung: the two with all topics (VG Prüm, Kreis) and Schönecken; not Otto Prüm, who
    # chose only mobilitaet.
    assert recipients(people, 'topics = ["versorgung"]\n') == 3
    assert recipients(people, 'topics = ["versorgung"]\nscope = ["Verbandsgemeinde Prüm"]\n') == 2
    assert recipients(people, 'topics = ["mobilitaet"]\n') == 4
    assert recipients(people, 'topics = ["strategie"]\n') == 3
    # Someone whose topics meet any one of the item's topics gets it, once.
    assert recipients(people, 'topics = ["versorgung", "mobilitaet"]\n') == 5
    assert recipients(people, 'topics = ["versorgung"]\nroles = ["mayor"]\n') == 1


def test_empty_topics_get_every_topic(people: Project) -> None:
    only_all = 'scope = ["Verbandsgemeinde Prüm"]\nroles = ["staff"]\n'  # Vera: empty topics
    for topic in ("strategie", "eifelleben", "versorgung", "mobilitaet"):
        assert recipients(people, f'{only_all}topics = ["{topic}"]\n') == 1
    only_mobility = f'scope = ["{OG_PRUEM}"]\n'  # Otto: mobilitaet only
    assert recipients(people, f'{only_mobility}topics = ["mobilitaet"]\n') == 1
    assert recipients(people, f'{only_mobility}topics = ["versorgung"]\n') == 0


def test_breakdown_by_level_and_role(people: Project) -> None:
    result = people.cli("announce", "--dry-run", announcement(people, ""))

    lines = result.output.splitlines()
    assert "Empfänger: 6" in lines
    assert (
        "  nach Ebene: Kreis 1, Verbandsgemeinde 2, Stadt (verbandsfrei) 1, Ortsgemeinde 2" in lines
    )
    assert "  nach Rolle: Mitarbeitende 4, Bürgermeister/innen 2" in lines

    result = people.cli(
        "announce", "--dry-run", announcement(people, 'scope = ["Verbandsgemeinde Prüm"]\n')
    )

    lines = result.output.splitlines()
    assert "Empfänger: 3" in lines
    assert "  nach Ebene: Verbandsgemeinde 1, Ortsgemeinde 2" in lines
    assert "  nach Rolle: Mitarbeitende 1, Bürgermeister/innen 2" in lines


def test_no_recipients_has_no_breakdown(people: Project) -> None:
    result = people.cli(
        "announce",
        "--dry-run",
        announcement(people, 'roles = ["council_member"]\n'),
    )

    assert "Empfänger: 0" in result.output.splitlines()
    assert "nach Ebene" not in result.output
    assert "nach Rolle" not in result.output


def test_dry_run_schedules_nothing(people: Project) -> None:
    people.cli("announce", "--dry-run", announcement(people, 'scope = ["Bitburg"]\n'))

    assert query(people, "SELECT count(*) FROM items") == [(0,)]
    assert query(people, "SELECT count(*) FROM outbox") == [(0,)]
