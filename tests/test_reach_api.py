"""``GET /api/v1/reach`` against a real ``notifier run``: the example subscribers in the real
Eifelkreis tree, counted as the CSV files say; the leader's snapshot of the day; the token."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

from notifier.db.models import Role

from .conftest import Project, Web
from .reach_expected import expected


def test_reach_api_counts_the_example_subscribers(
    web: Callable[..., Web], project: Project
) -> None:
    site = web()
    token = project.cli("tokens", "add", "cms").output.splitlines()[0]
    want = expected()
    topics = project.settings.topic_keys
    with httpx.Client(base_url=site.url("/api/v1"), timeout=15) as client:
        refused = client.get("/reach")
        assert refused.status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        # The scheduler's leader records the day's figures at its start.
        deadline = time.monotonic() + 20
        while True:
            answer = client.get("/reach", headers=headers)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            if data["history"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert data["subscribers"] == want.subscribers
    assert data["units"] == 239 and data["ortsgemeinden"] == 232
    assert data["mayors_reached"] == len(want.reached)
    assert data["units_reached"] == sum(1 for c in want.roles.values() if sum(c.values()))
    assert {g["name"]: (g["reached"], g["ortsgemeinden"]) for g in data["verbandsgemeinden"]} == (
        want.per_vg()
    )
    assert sorted(m["key"] for m in data["not_reached"]) == sorted(want.not_reached)
    assert all(
        m["verbandsgemeinde"] == want.names[want.parents[m["key"]] or ""]
        for m in data["not_reached"]
    )
    tree = {u["key"]: u for u in data["tree"]}
    assert set(tree) == set(want.names)
    for key, unit in tree.items():
        assert unit["name"] == want.names[key]
        assert unit["parent"] == want.parents[key]
        assert unit["mayor"] == want.mayor(key)
        assert unit["roles"] == {r.value: want.roles[key][r.value] for r in Role}
        assert unit["subscribers"] == sum(want.roles[key].values())
        chosen = want.topics.get(key, set())
        assert set(unit["topics"]) == (set(topics) if chosen is None else chosen)
    [today] = data["history"]
    assert today["subscribers"] == want.subscribers
    assert today["mayors_reached"] == len(want.reached)
    assert today["ortsgemeinden"] == 232
