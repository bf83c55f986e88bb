"""Commands over HTTP, end to end through the real broker and a real consumer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from contracts import CATALOGUE, PlanCreate, PlanGet, PlanView
from edge_api.settings import EdgeSettings
from messaging.errors import Forbidden, Reject, Retry
from messaging.handlers import Context, HandlerSpec
from messaging.identity import Origin, Principal
from messaging.settings import BrokerSettings
from tests.edge.conftest import (
    IdentityProvider,
    RunningEdge,
    Spy,
    StartConsumer,
    bearer,
    run_edge,
)
from workers.errors import IdentityChanged, NotFound, UndeclaredMessage

pytestmark = [pytest.mark.asyncio, pytest.mark.broker]

GOAL = {"goal": "run a marathon", "horizon_days": 90}


class Seen:
    """What the worker's handler was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Principal, BaseModel]] = []
        self.changed = asyncio.Event()

    async def record(self, context: Context, payload: BaseModel) -> None:
        self.calls.append((context.principal, payload))
        self.changed.set()

    async def wait(self, count: int = 1) -> None:
        async with asyncio.timeout(10):
            while len(self.calls) < count:
                self.changed.clear()
                await self.changed.wait()


def view(context: Context, payload: PlanGet) -> PlanView:
    return PlanView(
        plan_id=payload.plan_id,
        owner=context.principal.subject,
        goal="run",
        horizon_days=7,
        intent="fit",
        version=1,
        updated_at=datetime.now(UTC),
    )


async def test_an_accepted_command_reaches_the_worker_as_the_token_subject(
    edge: RunningEdge, idp: IdentityProvider, start_consumer: StartConsumer
) -> None:
    seen = Seen()
    await start_consumer(
        "planner", [HandlerSpec("plan.create", PlanCreate, seen.record)]
    )

    response = await edge.client.post(
        "/v1/commands/plan.create",
        json=GOAL,
        headers=bearer(idp.token("alice", ["planner", "reader"])),
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert body["command"] == "plan.create"
    assert response.headers["location"] == f"/v1/commands/{body['command_id']}"
    await seen.wait()
    principal, payload = seen.calls[0]
    assert payload == PlanCreate.model_validate(GOAL)
    assert principal.subject == "alice"
    assert principal.roles == {"planner", "reader"}
    assert principal.actors == ("edge",)
    assert principal.origin is Origin.HTTP
    assert principal.internal is False


async def test_command_status_answers_only_the_submitter(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    submitted = await edge.client.post(
        "/v1/commands/plan.create", json=GOAL, headers=bearer(idp.token("alice"))
    )
    location = submitted.headers["location"]

    mine = await edge.client.get(location, headers=bearer(idp.token("alice")))
    theirs = await edge.client.get(location, headers=bearer(idp.token("bob")))
    unknown = await edge.client.get(
        "/v1/commands/" + "0" * 32, headers=bearer(idp.token("alice"))
    )
    anonymous = await edge.client.get(location)

    assert mine.status_code == 200
    assert mine.json()["status"] == "accepted"
    assert mine.json()["command_id"] == submitted.json()["command_id"]
    assert theirs.status_code == 404
    assert theirs.json() == unknown.json() == {"detail": "no such command"}
    assert anonymous.status_code == 401
    await spy.take(1)


async def test_a_request_waits_for_the_reply_and_returns_it(
    edge: RunningEdge, idp: IdentityProvider, start_consumer: StartConsumer
) -> None:
    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, _answer)])

    response = await edge.client.post(
        "/v1/commands/plan.get",
        json={"plan_id": "p-1"},
        headers=bearer(idp.token("alice")),
    )

    assert response.status_code == 200, response.text
    assert response.json()["plan_id"] == "p-1"
    assert response.json()["owner"] == "alice"


async def test_each_reply_reaches_only_the_request_that_asked_for_it(
    edge: RunningEdge, idp: IdentityProvider, start_consumer: StartConsumer
) -> None:
    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, _answer)])
    users = [f"user{i}" for i in range(12)]

    responses = await asyncio.gather(
        *(
            edge.client.post(
                "/v1/commands/plan.get",
                json={"plan_id": f"plan-of-{user}"},
                headers=bearer(idp.token(user)),
            )
            for user in users
        )
    )

    for user, response in zip(users, responses, strict=True):
        assert response.status_code == 200
        assert response.json()["owner"] == user
        assert response.json()["plan_id"] == f"plan-of-{user}"


async def _answer(context: Context, payload: PlanGet) -> PlanView:
    return view(context, payload)


class StricterPlanGet(BaseModel):
    model_config = ConfigDict(extra="forbid")
    plan_id: int


@pytest.mark.parametrize(
    ("spec", "status", "error"),
    [
        (
            HandlerSpec(
                "plan.get", PlanGet, _answer, required_roles=frozenset({"auditor"})
            ),
            403,
            "Forbidden",
        ),
        (HandlerSpec("plan.get", StricterPlanGet, _answer), 422, "SchemaError"),
    ],
)
async def test_a_refusal_by_the_worker_maps_to_its_http_status(
    edge: RunningEdge,
    idp: IdentityProvider,
    start_consumer: StartConsumer,
    spec: HandlerSpec[Any],
    status: int,
    error: str,
) -> None:
    await start_consumer("planner", [spec])

    response = await edge.client.post(
        "/v1/commands/plan.get", json={"plan_id": "p-1"}, headers=bearer(idp.token())
    )

    assert response.status_code == status
    assert response.json()["detail"].startswith(f"{error}: ")


HIDDEN = "the service could not handle plan.get"


@pytest.mark.parametrize(
    ("raised", "status", "detail"),
    [
        (NotFound("no plan 'p-1'"), 404, "NotFound: no plan 'p-1'"),
        (Forbidden("not alice's"), 403, "Forbidden: not alice's"),
        (Reject("p-1 is archived"), 422, "Reject: p-1 is archived"),
        (ValueError("a bug"), 502, HIDDEN),
        (UndeclaredMessage("core published t.secret"), 502, HIDDEN),
        (IdentityChanged("handler swapped the subject"), 502, HIDDEN),
    ],
    ids=[
        "NotFound",
        "Forbidden",
        "Reject",
        "ValueError",
        "UndeclaredMessage",
        "IdentityChanged",
    ],
)
async def test_a_refusal_of_the_request_is_a_4xx_and_a_failure_of_ours_a_502(
    edge: RunningEdge,
    idp: IdentityProvider,
    start_consumer: StartConsumer,
    raised: Exception,
    status: int,
    detail: str,
) -> None:
    async def handler(context: Context, payload: PlanGet) -> PlanView:
        raise raised

    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, handler)])

    response = await edge.client.post(
        "/v1/commands/plan.get", json={"plan_id": "p-1"}, headers=bearer(idp.token())
    )

    assert response.status_code == status
    assert response.json() == {"detail": detail}


async def test_a_failing_worker_is_a_bad_gateway_that_keeps_its_reason_inside(
    edge: RunningEdge,
    idp: IdentityProvider,
    start_consumer: StartConsumer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(context: Context, payload: PlanGet) -> PlanView:
        raise Retry("the database is down")

    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, broken)])

    response = await edge.client.post(
        "/v1/commands/plan.get", json={"plan_id": "p-1"}, headers=bearer(idp.token())
    )

    assert response.status_code == 502
    assert response.json() == {"detail": "the service could not handle plan.get"}
    assert "plan.get failed in the service: Retry: the database is down" in (
        caplog.text
    )


async def test_no_reply_in_time_is_a_gateway_timeout(
    edge_settings: EdgeSettings,
    settings: BrokerSettings,
    idp: IdentityProvider,
    start_consumer: StartConsumer,
) -> None:
    released = asyncio.Event()

    async def slow(context: Context, payload: PlanGet) -> PlanView:
        await released.wait()
        return view(context, payload)

    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, slow)])
    impatient = edge_settings.model_copy(update={"reply_timeout": 0.3})
    async for running in run_edge(impatient, settings):
        response = await running.client.post(
            "/v1/commands/plan.get",
            json={"plan_id": "p-1"},
            headers=bearer(idp.token()),
        )
        released.set()

    assert response.status_code == 504
    assert "no reply" in response.json()["detail"]


async def test_the_edge_checks_required_roles_before_sending(
    edge: RunningEdge, idp: IdentityProvider, spy: Spy
) -> None:
    refused = await edge.client.post(
        "/v1/commands/plan.create",
        json=GOAL,
        headers=bearer(idp.token("mallory", ["reader"])),
    )
    allowed = await edge.client.post(
        "/v1/commands/plan.create", json=GOAL, headers=bearer(idp.token("alice"))
    )

    assert refused.status_code == 403
    assert refused.json() == {"detail": "plan.create requires the roles: planner"}
    assert allowed.status_code == 202
    [only] = await spy.take(1)
    assert only.message_id == allowed.json()["command_id"]


async def test_a_command_only_services_may_send_is_not_exposed(
    edge: RunningEdge, idp: IdentityProvider
) -> None:
    token = idp.token("alice", ["planner", "maintenance"])

    response = await edge.client.post(
        "/v1/commands/plan.prune", json={"older_than_days": 1}, headers=bearer(token)
    )
    openapi = (await edge.client.get("/openapi.json")).json()

    assert response.status_code == 405
    assert "/v1/commands/plan.prune" not in openapi["paths"]


async def test_openapi_documents_every_http_command_with_bearer_security(
    edge: RunningEdge,
) -> None:
    openapi = (await edge.client.get("/openapi.json")).json()

    exposed = {
        name
        for name, contract in CATALOGUE.items()
        if contract.http and contract.route.value == "command"
    }
    for name in exposed:
        operation = openapi["paths"][f"/v1/commands/{name}"]["post"]
        assert operation["security"] == [{"bearer": []}]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith(CATALOGUE[name].payload.__name__)
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert headers == {"X-Correlation-Id", "Idempotency-Key"}
    scheme = openapi["components"]["securitySchemes"]["bearer"]
    assert scheme == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": scheme["description"],
    }
    assert "plan.changed" not in str(openapi["paths"])


async def test_requests_work_again_after_the_edge_lost_its_connection(
    edge: RunningEdge, idp: IdentityProvider, start_consumer: StartConsumer
) -> None:
    await start_consumer("planner", [HandlerSpec("plan.get", PlanGet, _answer)])
    first = await edge.client.post(
        "/v1/commands/plan.get", json={"plan_id": "p-1"}, headers=bearer(idp.token())
    )
    await edge.app.state.edge.gateway.link.connection.close()

    statuses: list[int] = []
    async with asyncio.timeout(20):
        while not statuses or statuses[-1] != 200:
            response = await edge.client.post(
                "/v1/commands/plan.get",
                json={"plan_id": "p-2"},
                headers=bearer(idp.token("bob")),
            )
            statuses.append(response.status_code)
            if response.status_code != 200:
                await asyncio.sleep(0.05)

    assert first.status_code == 200
    assert set(statuses) <= {200, 503}
    assert response.json()["owner"] == "bob"
