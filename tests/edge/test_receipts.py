"""Receipts of accepted commands: bounded, ageing, readable by their submitter only."""

from __future__ import annotations

import time

from edge_api.receipts import Receipts
from messaging.identity import Principal


def user(subject: str, tenant: str | None = None) -> Principal:
    return Principal.user(subject, ["planner"], entered_by="edge", tenant=tenant)


def test_a_receipt_is_found_by_its_submitter_only() -> None:
    receipts = Receipts(max_entries=10, ttl=60)
    receipts.record("c1", "plan.create", user("alice", "acme"))

    found = receipts.find("c1", user("alice", "acme"))

    assert found is not None and found.command == "plan.create"
    assert receipts.find("c1", user("bob", "acme")) is None
    assert receipts.find("c1", user("alice", "globex")) is None
    assert receipts.find("c1", user("alice")) is None
    assert receipts.find("c2", user("alice", "acme")) is None


def test_the_oldest_receipts_make_room_for_new_ones() -> None:
    receipts = Receipts(max_entries=3, ttl=60)
    for number in range(5):
        receipts.record(f"c{number}", "plan.create", user("alice"))

    kept = [f"c{n}" for n in range(5) if receipts.find(f"c{n}", user("alice"))]

    assert kept == ["c2", "c3", "c4"]
    assert len(receipts) == 3


def test_a_receipt_older_than_its_ttl_is_forgotten() -> None:
    receipts = Receipts(max_entries=10, ttl=0.01)
    receipts.record("c1", "plan.create", user("alice"))
    time.sleep(0.05)

    assert receipts.find("c1", user("alice")) is None
    assert len(receipts) == 0
