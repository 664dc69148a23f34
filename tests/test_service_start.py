"""What a start of the service says about its configuration."""

from __future__ import annotations

import asyncio
import logging

import pytest

from notifier.service import Service

from .conftest import Project


@pytest.mark.parametrize(
    ("base_url", "warned"),
    [
        ("http://newsletter.kreis.example", True),
        ("http://10.0.0.5:8080", True),
        ("http://127.0.0.1:8080", False),
        ("http://localhost:8080", False),
        ("http://[::1]:8080", False),
        ("https://newsletter.kreis.example", False),
    ],
)
async def test_a_public_http_base_url_warns_once(
    project: Project, caplog: pytest.LogCaptureFixture, base_url: str, warned: bool
) -> None:
    project.write_config({"mail": {"public_base_url": base_url}})
    service = Service(project.settings, roles=("sender",))
    caplog.set_level(logging.WARNING, logger="notifier")
    task = asyncio.create_task(service.run(install_signal_handlers=False))
    await asyncio.wait_for(service.ready.wait(), 20)
    service.stop()
    await asyncio.wait_for(task, 20)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "HTTPS" in r.getMessage()
    ]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert base_url in warnings[0]
        assert "Abmelden mit einem Klick" in warnings[0]
