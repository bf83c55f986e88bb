"""The inbox: a duplicated or redelivered message has its side effect once."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts import Contract
from contracts.catalogue import Strict
from messaging.errors import SchemaError
from messaging.topology import Route
from tests.workers.conftest import Sender, StartWorker, eventually, user
from workers.context import ServiceContext
from workers.errors import AlreadyHandled
from workers.inbox import SqliteStore
from workers.service import Service

SCHEMA = "CREATE TABLE IF NOT EXISTS effects (message_id TEXT, text TEXT);"


class Deposit(Strict):
    text: str


DEPOSIT = Contract("t.deposit", Deposit)
DEPOSITED = Contract("t.deposited", Deposit, route=Route.EVENT)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(tmp_path / "effects.sqlite3", SCHEMA)
    yield db
    db.close()


async def _effects(store: SqliteStore) -> list[str]:
    rows = await store.query("SELECT text FROM effects ORDER BY rowid")
    return [row["text"] for row in rows]


@pytest.mark.asyncio
async def test_a_recorded_message_id_is_refused_and_its_effect_kept_once(
    store: SqliteStore,
) -> None:
    async with store.once("bank", "m-1") as tx:
        tx.execute("INSERT INTO effects VALUES ('m-1', 'first')")

    with pytest.raises(AlreadyHandled):
        async with store.once("bank", "m-1") as tx:
            tx.execute("INSERT INTO effects VALUES ('m-1', 'second')")

    assert await _effects(store) == ["first"]
    assert await store.handled("bank", "m-1")
    assert not await store.handled("audit", "m-1")


@pytest.mark.asyncio
async def test_a_failed_transaction_rolls_back_the_effect_and_the_record(
    store: SqliteStore,
) -> None:
    with pytest.raises(RuntimeError):
        async with store.once("bank", "m-2") as tx:
            tx.execute("INSERT INTO effects VALUES ('m-2', 'lost')")
            raise RuntimeError("disk on fire")

    assert await _effects(store) == []
    assert not await store.handled("bank", "m-2")
    async with store.once("bank", "m-2") as tx:
        tx.execute("INSERT INTO effects VALUES ('m-2', 'again')")
    assert await _effects(store) == ["again"]


@pytest.mark.asyncio
async def test_the_record_survives_reopening_the_database(tmp_path: Path) -> None:
    path = tmp_path / "effects.sqlite3"
    first = SqliteStore(path, SCHEMA)
    async with first.once("bank", "m-3") as tx:
        tx.execute("INSERT INTO effects VALUES ('m-3', 'kept')")
    first.close()

    reopened = SqliteStore(path, SCHEMA)
    try:
        with pytest.raises(AlreadyHandled):
            async with reopened.once("bank", "m-3"):
                pass
        assert await _effects(reopened) == ["kept"]
    finally:
        reopened.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM inbox").fetchone() == (1,)


def _bank(
    store: SqliteStore, attempts: list[str], *, announce: bool, fail_once: bool
) -> Service:
    bank = Service("bank")
    bank.emits(DEPOSITED)

    @bank.handles(DEPOSIT)
    async def deposit(ctx: ServiceContext, cmd: Deposit) -> None:
        attempts.append(ctx.message_id)
        async with ctx.once(store) as tx:
            tx.execute("INSERT INTO effects VALUES (?, ?)", (ctx.message_id, cmd.text))
            if announce:
                await ctx.publish_event(DEPOSITED, cmd)
            if fail_once and len(attempts) == 1:
                raise RuntimeError("crashed after publishing, before committing")

    return bank


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_duplicated_message_has_its_side_effect_once(
    run: StartWorker, sender: Sender, store: SqliteStore
) -> None:
    attempts: list[str] = []
    await run(_bank(store, attempts, announce=False, fail_once=False))

    for _ in range(2):
        await sender.command(DEPOSIT, Deposit(text="10"), user(), message_id="dup-1")

    await eventually(lambda: len(attempts) == 2, what="both deliveries")
    assert attempts == ["dup-1", "dup-1"]
    assert await _effects(store) == ["10"]


@pytest.mark.asyncio
@pytest.mark.broker
async def test_a_retried_handler_republishes_the_same_ids_and_downstream_keeps_one(
    run: StartWorker, sender: Sender, tmp_path: Path, store: SqliteStore
) -> None:
    attempts: list[str] = []
    ledger = SqliteStore(tmp_path / "ledger.sqlite3", SCHEMA)
    audit = Service("audit")
    seen_ids: list[str] = []

    @audit.handles(DEPOSITED)
    async def record(ctx: ServiceContext, event: Deposit) -> None:
        seen_ids.append(ctx.message_id)
        async with ctx.once(ledger) as tx:
            tx.execute(
                "INSERT INTO effects VALUES (?, ?)", (ctx.message_id, event.text)
            )

    try:
        await run(audit)
        await run(_bank(store, attempts, announce=True, fail_once=True))
        await sender.command(DEPOSIT, Deposit(text="25"), user(), message_id="m-9")

        await eventually(lambda: len(seen_ids) == 2, what="the republished event")
        assert len(attempts) == 2
        assert seen_ids[0] == seen_ids[1]
        assert await _effects(store) == ["25"]
        assert await _effects(ledger) == ["25"]
    finally:
        ledger.close()


@pytest.mark.asyncio
async def test_a_message_without_an_id_cannot_be_handled_once(
    store: SqliteStore,
) -> None:
    context = ServiceContext.__new__(ServiceContext)
    context.message_id = ""
    context.message_type = "t.deposit"
    context.service = "bank"

    with pytest.raises(SchemaError, match="no message id"):
        context.once(store)


@pytest.mark.asyncio
async def test_a_transaction_cancelled_inside_its_block_rolls_back(
    store: SqliteStore,
) -> None:
    entered = asyncio.Event()

    async def slow_effect() -> None:
        async with store.once("bank", "m-5") as tx:
            tx.execute("INSERT INTO effects VALUES ('m-5', 'half')")
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(slow_effect())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await _effects(store) == []
    async with store.once("bank", "m-5") as tx:
        tx.execute("INSERT INTO effects VALUES ('m-5', 'whole')")
    assert await _effects(store) == ["whole"]


@pytest.mark.asyncio
async def test_a_transaction_cancelled_while_waiting_for_the_lock_leaves_none_open(
    store: SqliteStore,
) -> None:
    other_process = sqlite3.connect(store.path, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    try:
        waiting = asyncio.create_task(_deposit(store, "m-6"))
        await asyncio.sleep(0.3)
        waiting.cancel()
        await asyncio.sleep(0.1)
        other_process.execute("ROLLBACK")
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        other_process.close()

    await _deposit(store, "m-7")
    assert await _effects(store) == ["m-7"]
    assert not await store.handled("bank", "m-6")


async def _deposit(store: SqliteStore, message_id: str) -> None:
    async with store.once("bank", message_id) as tx:
        tx.execute("INSERT INTO effects VALUES (?, ?)", (message_id, message_id))
