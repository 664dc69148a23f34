"""Reading submitted forms, and the values of a subscriber's form (sign-up, preferences, the
office's edit page)."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData

from ..addresses import display_email
from ..db.models import Subscriber


def field(form: FormData, name: str) -> str:
    """One text field ("" when missing or a file)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


def fields(form: FormData, name: str) -> list[str]:
    """Every non-empty value of a repeated field (checkboxes, multiple selects)."""
    return [v for v in form.getlist(name) if isinstance(v, str) and v]


def subscriber_values(sub: Subscriber, organisation: str) -> dict[str, Any]:
    """A subscriber as the form shows them; ``organisation`` is the unit's label."""
    return {
        "email": display_email(sub.email),
        "name": sub.name,
        "organisation": organisation,
        "role": sub.role.value,
        "rhythm": sub.rhythm.value,
        "all_topics": sub.all_topics,
        "topics": [s.topic_key for s in sub.subscriptions],
    }


def submitted_subscriber(form: FormData) -> dict[str, Any]:
    """What a subscriber form sent, to show it again with its errors."""
    return {
        "email": display_email(field(form, "email")),
        "name": field(form, "name"),
        "organisation": field(form, "organisation"),
        "role": field(form, "role"),
        "rhythm": field(form, "rhythm") or "immediate",
        "all_topics": field(form, "all_topics") == "1",
        "topics": fields(form, "topics"),
    }
