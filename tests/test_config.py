"""config.toml → Settings: the repo's file loads as it is, and every problem names file and key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from notifier.config import load_settings
from notifier.errors import ConfigError

from .conftest import REPO, Project

REPO_CONFIG = REPO / "config.toml"


def repo_config() -> dict[str, Any]:
    """The repo's config (it loads from any folder: templates and legal texts are packaged)."""
    return tomllib.loads(REPO_CONFIG.read_text("utf-8"))


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), "utf-8")
    return path


def config_error(path: Path, environ: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={} if environ is None else environ)
    return info.value


def test_repo_config_loads_as_it_is() -> None:
    settings = load_settings(REPO_CONFIG, environ={})

    assert settings.smtp.catcher is True
    assert settings.smtp.port == 587
    assert settings.smtp.tls == "starttls"
    assert settings.smtp.password.get_secret_value() == ""
    assert settings.mail.sender_address == "newsletter@eifelkreis-verbindet.example"
    assert settings.mail.domain == "eifelkreis-verbindet.example"
    assert settings.scheduler.timezone == "Europe/Berlin"
    assert settings.topic_keys == ["strategie", "eifelleben", "versorgung", "mobilitaet"]
    assert settings.base_dir == REPO
    # The data directory lies under the config file's folder, not the working directory; the
    # default SQLite file, secret key and catcher folder lie in it.
    assert settings.data_dir == REPO / "var"
    assert settings.database_url == f"sqlite+aiosqlite:///{REPO / 'var' / 'notifier.db'}"
    assert settings.secret_key_path == REPO / "var" / "secret.key"
    assert settings.catcher_dir == REPO / "var" / "mails"
    # Templates and the example statements come from the package, wherever it is installed.
    package = REPO / "notifier"
    assert settings.template_dirs("email") == [package / "templates" / "email"]
    assert settings.legal_file("privacy_file") == package / "legal" / "datenschutz.md"
    assert settings.legal_file("accessibility_file") == package / "legal" / "barrierefreiheit.md"


def test_wrong_type_names_file_and_key(tmp_path: Path) -> None:
    data = repo_config()
    data["smtp"]["port"] = "abc"
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "smtp.port"
    assert error.path == str(path)
    assert str(path) in str(error)
    assert "'smtp.port'" in str(error)
    assert "'abc'" in str(error)


def test_port_out_of_range_is_refused(tmp_path: Path) -> None:
    data = repo_config()
    data["smtp"]["port"] = 70000
    error = config_error(write_toml(tmp_path / "config.toml", data))

    assert error.key == "smtp.port"
    assert "70000" in str(error)


def test_message_size_limit_must_be_positive(tmp_path: Path) -> None:
    assert load_settings(REPO_CONFIG, environ={}).mail.max_message_bytes == 10_000_000
    data = repo_config()
    data["mail"]["max_message_bytes"] = 0
    error = config_error(write_toml(tmp_path / "config.toml", data))

    assert error.key == "mail.max_message_bytes"
    assert "greater than 0" in str(error)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    data = repo_config()
    data["smtp"]["hots"] = "mail.example"
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "smtp.hots"
    assert str(path) in str(error)
    assert "unknown key" in str(error)


def test_unknown_section_is_named(tmp_path: Path) -> None:
    data = repo_config()
    data["smpt"] = {"host": "mail.example"}
    error = config_error(write_toml(tmp_path / "config.toml", data))

    assert error.key == "smpt"
    assert "unknown key" in str(error)


def test_missing_required_value_is_named(tmp_path: Path) -> None:
    data = repo_config()
    del data["mail"]["sender_address"]
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "mail.sender_address"
    assert str(path) in str(error)
    assert "missing" in str(error)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[smtp]\nhost = "unterminated\n', "utf-8")

    error = config_error(path)

    assert error.path == str(path)
    assert str(error).startswith(str(path))
    assert "invalid TOML" in str(error)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    error = config_error(path)

    assert str(path) in str(error)
    assert "not found" in str(error)


def test_environment_sets_the_password(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "config.toml", repo_config())

    settings = load_settings(path, environ={"NOTIFIER_SMTP__PASSWORD": "geheim-123"})

    assert settings.smtp.password.get_secret_value() == "geheim-123"
    # A secret is never shown by accident.
    assert "geheim-123" not in repr(settings)
    assert "geheim-123" not in str(settings.smtp)


def test_environment_values_are_converted(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "config.toml", repo_config())

    settings = load_settings(
        path,
        environ={
            "NOTIFIER_SMTP__PORT": "2526",
            "NOTIFIER_SMTP__CATCHER": "false",
            "NOTIFIER_MAIL__SENDER_NAME": "Projektbüro",
            "UNRELATED": "x",
        },
    )

    assert settings.smtp.port == 2526
    assert settings.smtp.catcher is False
    assert settings.mail.sender_name == "Projektbüro"


def test_explicit_environ_ignores_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFIER_SMTP__PORT", "abc")
    path = write_toml(tmp_path / "config.toml", repo_config())

    assert load_settings(path, environ={}).smtp.port == 587
    with pytest.raises(ConfigError, match="NOTIFIER_SMTP__PORT"):
        load_settings(path)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "config.toml", repo_config())

    error = config_error(path, {"NOTIFIER_SMTP__PORT": "abc"})

    assert error.key == "smtp.port"
    assert str(path) in str(error)
    assert "NOTIFIER_SMTP__PORT" in str(error)


def test_unknown_time_zone(tmp_path: Path) -> None:
    data = repo_config()
    data["scheduler"]["timezone"] = "Europe/Bitburg"
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "scheduler.timezone"
    assert "unknown time zone" in str(error)
    assert "Europe/Bitburg" in str(error)


def test_duplicate_topic_keys(tmp_path: Path) -> None:
    data = repo_config()
    data["topics"].append({"key": "versorgung", "title": "Versorgung (nochmal)"})
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "topics"
    assert "'versorgung'" in str(error)
    assert "twice" in str(error)


def test_bad_topic_key_names_its_position(tmp_path: Path) -> None:
    data = repo_config()
    data["topics"][1]["key"] = "Eifel Leben"
    error = config_error(write_toml(tmp_path / "config.toml", data))

    assert error.key == "topics[1].key"


def test_relative_sqlite_path_is_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = repo_config()
    data["database"]["url"] = "sqlite+aiosqlite:///data/notifier.db"
    write_toml(tmp_path / "etc" / "config.toml", data)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    # The config path itself is relative to the working directory; the database is not.
    settings = load_settings(Path("..") / "etc" / "config.toml", environ={})

    expected = (tmp_path / "etc" / "data" / "notifier.db").resolve()
    assert settings.database_url == f"sqlite+aiosqlite:///{expected}"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite:////srv/notifier/notifier.db",
        "sqlite+aiosqlite:///:memory:",
        "postgresql+asyncpg://notifier@db.example/notifier",
    ],
)
def test_other_database_urls_are_kept(tmp_path: Path, url: str) -> None:
    data = repo_config()
    data["database"]["url"] = url
    settings = load_settings(write_toml(tmp_path / "config.toml", data), environ={})

    assert settings.database_url == url


def test_cli_reports_a_config_error_in_one_line(project: Project) -> None:
    project.write_config({"smtp": {"port": "abc"}})

    result = project.cli("status", ok=False)

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(project.config) in lines[0]
    assert "smtp.port" in lines[0]
    assert "Konfigurationsfehler" in lines[0]


def test_cli_reports_a_missing_value(project: Project) -> None:
    data = tomllib.loads(project.config.read_text("utf-8"))
    del data["mail"]["sender_address"]
    write_toml(project.config, data)

    result = project.cli("status", ok=False)

    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert str(project.config) in lines[0]
    assert "mail.sender_address" in lines[0]


def test_cli_reports_invalid_toml(project: Project) -> None:
    project.config.write_text("[smtp\nport = 25\n", "utf-8")

    result = project.cli("status", ok=False)

    assert result.exit_code == 2
    assert str(project.config) in result.output
    assert "invalid TOML" in result.output


def test_cli_runs_with_the_test_config(project: Project) -> None:
    result = project.cli("status")

    assert "wartend" in result.output
    assert (project.root / "var" / "test.db").is_file()


def test_allowed_domains_are_compared_in_their_idna_form(tmp_path: Path) -> None:
    data = repo_config()
    data["web"]["allowed_domains"] = ["@Bürgermeister.de", "vg-pruem.example"]
    path = write_toml(tmp_path / "config.toml", data)

    settings = load_settings(path, environ={})

    idna = "bürgermeister.de".encode("idna").decode("ascii")
    assert settings.web.allowed_domains == [idna, "vg-pruem.example"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("feedback_id", "a:b c:id"),
        ("feedback_id", "a:b\r\nBcc: x@example.org"),
        ("unsubscribe_mailto", "ab@kreis.example?subject=x"),
        ("unsubscribe_mailto", "kein-at-zeichen"),
    ],
)
def test_feedback_id_and_unsubscribe_mailto_are_checked(
    tmp_path: Path, key: str, value: str
) -> None:
    assert load_settings(REPO_CONFIG, environ={}).mail.feedback_id == ""
    assert load_settings(REPO_CONFIG, environ={}).mail.unsubscribe_mailto == ""
    data = repo_config()
    data["mail"][key] = value
    error = config_error(write_toml(tmp_path / "config.toml", data))

    assert error.key == f"mail.{key}"


# -- paths ------------------------------------------------------------------------------------


def _start_error(project: Project, changes: dict[str, Any]) -> str:
    """The one line a start with ``changes`` stops with."""
    project.write_config(changes)
    result = project.cli("run", ok=False)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Konfigurationsfehler: {project.config}: ")
    assert "Traceback" not in result.output
    return lines[0]


def test_a_copy_of_the_config_elsewhere_runs_on_its_own_data_directory(
    project: Project, tmp_path: Path
) -> None:
    # The checkout's config.toml copied to another folder (as /etc/notifier) finds templates
    # and legal texts in the package and keeps its data in the folder [paths] data names.
    data = tmp_path / "lib"
    data.mkdir()
    changes = {"database": {"url": ""}, "paths": {"data": str(data)}}
    project.write_config(changes)

    project.cli("migrate")
    project.seed()

    assert (data / "notifier.db").is_file()
    assert not (project.root / "var" / "notifier.db").exists()
    settings = project.settings
    assert settings.secret_key_path == data / "secret.key"


def test_the_default_data_directory_is_created(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "etc" / "config.toml", repo_config())

    settings = load_settings(path, environ={})

    assert (tmp_path / "etc" / "var").is_dir()
    assert settings.data_dir == tmp_path / "etc" / "var"


def test_a_missing_data_directory_stops_the_start(project: Project, tmp_path: Path) -> None:
    missing = tmp_path / "lib" / "notifier"

    line = _start_error(project, {"paths": {"data": str(missing)}})

    assert "key 'paths.data'" in line
    assert f"Verzeichnis {missing} existiert nicht" in line
    assert not missing.exists(), "a named data directory is never created"


def test_a_data_directory_that_is_a_file_stops_the_start(project: Project) -> None:
    file = project.write("daten", "kein Ordner")

    line = _start_error(project, {"paths": {"data": "daten"}})

    assert "key 'paths.data'" in line
    assert f"{file} ist kein Verzeichnis" in line


def test_a_missing_override_templates_folder_stops_the_start(project: Project) -> None:
    line = _start_error(project, {"paths": {"templates": "vorlagen"}})

    assert "key 'paths.templates'" in line
    assert f"Vorlagenordner {project.root / 'vorlagen'} existiert nicht" in line


def test_a_missing_legal_file_stops_the_start(project: Project) -> None:
    line = _start_error(project, {"legal": {"privacy_file": "recht/datenschutz.md"}})

    assert "key 'legal.privacy_file'" in line
    assert f"Datei {project.root / 'recht' / 'datenschutz.md'} nicht gefunden" in line


def test_a_secret_key_file_in_a_missing_place_stops_the_start(project: Project) -> None:
    blocker = project.write("schluessel", "eine Datei, kein Ordner")

    line = _start_error(project, {"web": {"secret_key_file": "schluessel/secret.key"}})

    assert "key 'web.secret_key_file'" in line
    assert f"{blocker / 'secret.key'} lässt sich nicht anlegen" in line
    assert f"{blocker} ist kein Verzeichnis" in line


def test_a_given_secret_key_needs_no_file(project: Project) -> None:
    project.write_config(
        {"web": {"secret_key": "k" * 40, "secret_key_file": "/nonexistent/folder/secret.key"}}
    )

    assert project.settings.web.secret_key.get_secret_value() == "k" * 40


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run the command as a user who cannot write the folder",
)
def test_a_data_directory_the_service_cannot_write_stops_the_start() -> None:
    # The config is readable by everyone, the data directory belongs to root: the command runs
    # as nobody, as a service user would whose folder was made by root. (A folder of its own
    # under /tmp: pytest's base folder is private and made so again by every pytest session.)
    with tempfile.TemporaryDirectory(prefix="notifier-perm-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        data = folder / "lib"
        data.mkdir()
        data.chmod(0o755)
        config = repo_config()
        config["paths"]["data"] = str(data)
        path = write_toml(folder / "etc" / "config.toml", config)
        path.parent.chmod(0o755)
        path.chmod(0o644)
        code = f"from notifier.cli import main; main(['--config', {str(path)!r}, 'status'])"
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        result = subprocess.run(
            [*nobody, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "key 'paths.data'" in lines[0]
    assert f"Verzeichnis {data} ist für Benutzer nobody nicht beschreibbar" in lines[0]


def test_an_empty_data_directory_is_refused(tmp_path: Path) -> None:
    data = repo_config()
    data["paths"]["data"] = " "
    path = write_toml(tmp_path / "config.toml", data)

    error = config_error(path)

    assert error.key == "paths.data"
    assert "must name a folder" in error.problem
