"""Check that every e-mail and page template renders with sample data."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config import Settings
from .findings import Finding, failed, passed


def _template_place(exc: BaseException) -> str:
    """``email/base.html, Zeile 3`` for an error raised in a template, if it says where."""
    import jinja2

    if isinstance(exc, jinja2.TemplateSyntaxError):
        name = exc.filename or exc.name or "?"
        return f"{name}, Zeile {exc.lineno}"
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.endswith((".html", ".txt"))
    ]
    if frames:
        return f"{frames[-1].filename}, Zeile {frames[-1].lineno}"
    return ""


def _sample_items() -> list[Any]:
    from ..db.models import Item, ItemKind, ItemStatus

    now = datetime.now(UTC)
    common: dict[str, Any] = {
        "topics": [],
        "scope": [],
        "roles": [],
        "important": False,
        "send_at": now,
        "status": ItemStatus.routed,
        "created_at": now,
        "created_by": "doctor",
        "source": "beispiel",
        "link": "https://www.example.org/beitrag",
        "published_at": now,
        "content_hash": "0" * 64,
        "all_day": False,
        "event_cancelled": False,
        "change_count": 0,
        "location": None,
        "starts_at": None,
        "ends_at": None,
    }
    return [
        Item(
            id=1, kind=ItemKind.announcement, subject="Probe", body="**Text** der Probe.", **common
        ),
        Item(
            id=2,
            kind=ItemKind.update,
            subject="Neuigkeit",
            body="Kurztext.",
            external_key="n1",
            **common,
        ),
        Item(
            id=3,
            kind=ItemKind.event,
            subject="Termin",
            body="Beschreibung.",
            external_key="t1",
            **{
                **common,
                "starts_at": now + timedelta(days=7),
                "ends_at": now + timedelta(days=7, hours=2),
                "location": "Bitburg",
            },
        ),
    ]


def _render_emails(settings: Settings) -> int:
    """Render every e-mail kind with sample data, as the sender builds them; returns how many."""
    from ..db.models import Rhythm
    from ..rendering import Recipient, Renderer

    # The templates only: the DKIM key has a check of its own.
    unsigned = settings.model_copy(
        update={"dkim": settings.dkim.model_copy(update={"enabled": False})}
    )
    renderer = Renderer(unsigned)
    base = settings.mail.public_base_url
    recipient = Recipient(
        email="probe@example.org",
        name="Erika Probe",
        organisation="Eifelkreis Bitburg-Prüm",
        topics=[],
        preferences_url=f"{base}/einstellungen/x",
        unsubscribe_url=f"{base}/abmelden/x",
        confirm_url=f"{base}/bestaetigen/x",
    )
    announcement, update, event = _sample_items()
    prepared = [
        renderer.prepare(announcement),
        renderer.prepare(update),
        *(
            renderer.prepare(event, n)
            for n in ("", "reminder:1", "changed:1", "cancelled:1", "restored:2")
        ),
        renderer.prepare_briefing(Rhythm.daily, [announcement, update, event], None),
        renderer.prepare_service("confirm"),
        renderer.prepare_service("links"),
    ]
    for one in prepared:
        renderer.build(one, recipient, message_id="<probe@example.org>", date=datetime.now(UTC))
    return len(prepared)


def _render_pages(settings: Settings) -> int:
    """Render every page template with sample data (anything a page would be given stands in
    as an empty value); returns how many."""
    import jinja2

    from ..web.app import _templates

    class _Sample(jinja2.ChainableUndefined):
        """Whatever a page is given by its route: empty, callable, comparable, countable."""

        def __call__(self, *args: Any, **kwargs: Any) -> _Sample:  # type: ignore[override]
            return self

        def _false(self, other: Any) -> bool:
            return False

        def _same(self, *other: Any) -> _Sample:
            return self

        __lt__ = __le__ = __gt__ = __ge__ = _false  # type: ignore[assignment]
        __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _same  # type: ignore[assignment]
        __truediv__ = __floordiv__ = __mod__ = __neg__ = _same  # type: ignore[assignment]

    def lenient(function: Callable[..., Any]) -> Callable[..., Any]:
        # Filters that take the context or environment first (pass_context …) keep doing so.
        passes = getattr(function, "jinja_pass_arg", None)

        def apply(*args: Any, **kwargs: Any) -> Any:
            value = args[1 if passes else 0]
            if isinstance(value, jinja2.Undefined):
                return value
            return function(*args, **kwargs)

        if passes is not None:
            apply.jinja_pass_arg = passes  # type: ignore[attr-defined]
        return apply

    env = _templates(settings).env.overlay()
    env.undefined = _Sample
    # A filter given a stand-in passes it on ("default" is meant for exactly that case).
    env.filters = {
        name: f if name in ("default", "d") else lenient(f) for name, f in env.filters.items()
    }
    names = [n for n in env.list_templates() if n.endswith(".html")]
    context = {"mail": settings.mail, "csrf_field": "csrf_token", "csrf_token": "probe"}
    for name in names:
        env.get_template(name).render(context)
    return len(names)


async def check_templates(settings: Settings) -> Sequence[Finding]:
    """Every e-mail and page template renders with sample data."""
    found: list[Finding] = []
    if settings.paths.templates:
        folder = settings.path(settings.paths.templates)
        hint = (
            f"Korrigieren Sie die Vorlage im Ordner von [paths] templates ({folder}), oder "
            "entfernen Sie sie dort: dann gilt die mitgelieferte Vorlage dieser notifier-Version."
        )
    else:
        hint = "Die mitgelieferten Vorlagen sind beschädigt: Installieren Sie notifier neu."
    for label, render in (("E-Mail-Vorlagen", _render_emails), ("Seitenvorlagen", _render_pages)):
        try:
            count = await asyncio.to_thread(render, settings)
        except Exception as exc:
            place = _template_place(exc)
            where = f" ({place})" if place else ""
            found.append(failed(f"{label}: Fehler{where}: {type(exc).__name__}: {exc}", hint))
        else:
            found.append(passed(f"{label}: {count} erstellt"))
    return found
