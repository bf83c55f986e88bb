"""The HTTP surface: one route per catalogue command, command status, health.

    POST /v1/commands/{name}     submit a command (202) or a request (200)
    GET  /v1/commands/{id}       status of a command you submitted (else 404)
    GET  /health/live            the process answers
    GET  /health/ready           the broker connection is up (else 503)

Routes are declared from :data:`contracts.CATALOGUE`: every command contract
with ``http`` set becomes a route whose body is the contract's payload model
(unknown fields refused with 422, so no identity rides in a body) and whose
required roles are checked here as well as in the worker.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Path, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from contracts import Contract, Mode
from edge_api.auth import authenticate, authorized
from edge_api.client_headers import command_id, correlation_id, idempotency_key
from edge_api.json_body import UntrustedJsonRoute
from edge_api.state import edge_of
from messaging.errors import (
    BrokerUnavailable,
    ConfirmTimeout,
    MessageReturned,
    PublishError,
    PublishNacked,
    RemoteError,
    RequestError,
    RequestTimeout,
)
from messaging.identity import Principal
from messaging.topology import Route

logger = logging.getLogger(__name__)

COMMANDS_PATH: Final = "/v1/commands"
COMMAND_ID: Final = r"^[0-9a-f]{32}$"
# A service's refusal of the request itself is the client's to read, with the
# status that says why. Everything else a service answers (a crash, a timeout,
# a trust check failing between our own services, a service refusing what it
# published itself) is our fault: 502, with the reason kept in our log.
REMOTE_STATUS: Final = {
    "Forbidden": status.HTTP_403_FORBIDDEN,
    "NotFound": status.HTTP_404_NOT_FOUND,
    "SchemaError": status.HTTP_422_UNPROCESSABLE_CONTENT,
    "Reject": status.HTTP_422_UNPROCESSABLE_CONTENT,
}


class Accepted(BaseModel):
    """The answer to a command the broker has taken responsibility for."""

    command_id: str
    command: str
    status: str = "accepted"
    location: str
    correlation_id: str | None = None


class CommandStatus(BaseModel):
    """What the edge knows about a command you submitted."""

    command_id: str
    command: str
    status: str
    submitted_at: datetime


class Problem(BaseModel):
    detail: str


def http_contracts(catalogue: Iterable[Contract]) -> list[Contract]:
    """The contracts the edge exposes: commands flagged for HTTP."""
    return [c for c in catalogue if c.route is Route.COMMAND and c.http]


def commands_router(catalogue: Iterable[Contract]) -> APIRouter:
    router = APIRouter(
        prefix=COMMANDS_PATH, tags=["commands"], route_class=UntrustedJsonRoute
    )
    for contract in http_contracts(catalogue):
        _add_command_route(router, contract)
    router.add_api_route(
        "/{command_id}",
        command_status,
        methods=["GET"],
        response_model=CommandStatus,
        summary="Status of a command you submitted",
        responses={404: {"model": Problem}, 401: {"model": Problem}},
    )
    return router


def health_router() -> APIRouter:
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/live", summary="The process answers")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get("/ready", summary="The broker connection is up")
    async def ready(request: Request) -> JSONResponse:
        if edge_of(request).gateway.is_ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse(
            {"status": "not ready", "detail": "no broker connection"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    return router


async def command_status(
    request: Request,
    command_id: Annotated[str, Path(pattern=COMMAND_ID)],
    principal: Annotated[Principal, Depends(authenticate)],
) -> CommandStatus:
    """Answers only the submitter; anyone else gets 404, as for an unknown id."""
    receipt = edge_of(request).receipts.find(command_id, principal)
    if receipt is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="no such command")
    return CommandStatus(
        command_id=receipt.command_id,
        command=receipt.command,
        status=receipt.status,
        submitted_at=receipt.submitted_at,
    )


def _add_command_route(router: APIRouter, contract: Contract) -> None:
    request_mode = contract.mode is Mode.REQUEST
    responses: dict[int | str, dict[str, Any]] = {
        code: {"model": Problem} for code in (400, 401, 403, 413, 503)
    }
    if request_mode:
        responses.update({code: {"model": Problem} for code in (404, 502, 504)})
    router.add_api_route(
        f"/{contract.name}",
        _endpoint(contract),
        methods=["POST"],
        response_model=contract.reply if request_mode else Accepted,
        status_code=status.HTTP_200_OK if request_mode else status.HTTP_202_ACCEPTED,
        summary=contract.summary or contract.name,
        description=_description(contract),
        name=contract.name,
        responses=responses,
    )


def _endpoint(contract: Contract) -> Callable[..., Awaitable[BaseModel]]:
    async def endpoint(
        request: Request,
        response: Response,
        payload: BaseModel,
        principal: Principal,
        correlation: Annotated[str | None, Depends(correlation_id)],
        key: Annotated[str | None, Depends(idempotency_key)],
    ) -> BaseModel:
        if contract.mode is Mode.REQUEST:
            return await _ask(request, contract, payload, principal, correlation)
        message_id = (
            None if key is None else command_id(principal, contract, payload, key)
        )
        accepted = await _send(
            request, contract, payload, principal, correlation, message_id
        )
        response.headers["Location"] = accepted.location
        return accepted

    # The body's model and the role check depend on the contract, known only
    # at runtime; FastAPI reads both from the signature.
    signature = inspect.signature(endpoint)
    annotations: dict[str, Any] = {
        "payload": contract.payload,
        "principal": Annotated[Principal, Depends(authorized(contract))],
    }
    parameters = [
        p.replace(annotation=annotations.get(p.name, p.annotation))
        for p in signature.parameters.values()
    ]
    endpoint.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    endpoint.__name__ = "submit_" + contract.name.replace(".", "_")
    return endpoint


async def _send(
    request: Request,
    contract: Contract,
    payload: BaseModel,
    principal: Principal,
    correlation: str | None,
    message_id: str | None,
) -> Accepted:
    edge = edge_of(request)
    try:
        sent = await edge.gateway.send(
            contract,
            payload,
            principal,
            correlation_id=correlation,
            message_id=message_id,
        )
    except PublishError as exc:
        raise _unavailable(request, contract, exc) from None
    edge.receipts.record(sent, contract.name, principal)
    logger.info("accepted %s %s for %s", contract.name, sent, principal.subject)
    return Accepted(
        command_id=sent,
        command=contract.name,
        location=f"{COMMANDS_PATH}/{sent}",
        correlation_id=correlation or sent,
    )


async def _ask(
    request: Request,
    contract: Contract,
    payload: BaseModel,
    principal: Principal,
    correlation: str | None,
) -> BaseModel:
    edge = edge_of(request)
    try:
        return await edge.gateway.ask(
            contract,
            payload,
            principal,
            correlation_id=correlation,
            timeout=edge.settings.reply_timeout,
        )
    except PublishError as exc:
        raise _unavailable(request, contract, exc) from None
    except RequestTimeout:
        raise HTTPException(
            status.HTTP_504_GATEWAY_TIMEOUT,
            detail=f"no reply to {contract.name} within {edge.settings.reply_timeout}s",
        ) from None
    except RemoteError as exc:
        raise _remote_failure(contract, exc) from None
    except RequestError as exc:
        raise _unavailable(request, contract, exc) from None


def _remote_failure(contract: Contract, exc: RemoteError) -> HTTPException:
    """A refusal about the request is the client's to read; a crash is ours."""
    code = REMOTE_STATUS.get(exc.error_type)
    if code is not None:
        logger.info("%s refused: %s", contract.name, exc)
        return HTTPException(code, detail=f"{exc.error_type}: {exc.message}")
    logger.warning("%s failed in the service: %s", contract.name, exc)
    return HTTPException(
        status.HTTP_502_BAD_GATEWAY,
        detail=f"the service could not handle {contract.name}",
    )


def _unavailable(
    request: Request, contract: Contract, exc: PublishError | RequestError
) -> HTTPException:
    if isinstance(exc, MessageReturned):
        reason = f"no service takes {contract.name} right now"
    elif isinstance(exc, PublishNacked):
        reason = f"the broker refused {contract.name} (its queue may be full)"
    elif isinstance(exc, ConfirmTimeout):
        reason = (
            f"the broker did not confirm {contract.name} in time; it may or may "
            "not have been taken (sent again with the same Idempotency-Key, it "
            "cannot run twice)"
        )
    elif isinstance(exc, BrokerUnavailable):
        reason = "the message broker is unavailable"
    else:
        reason = f"{contract.name} could not be sent"
    logger.warning("%s not sent: %s", contract.name, exc)
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail=reason,
        headers={"Retry-After": str(edge_of(request).settings.retry_after)},
    )


def _description(contract: Contract) -> str:
    roles = ", ".join(sorted(contract.roles)) or "none"
    if contract.mode is Mode.REQUEST:
        mode = "Waits for the service's reply (200), or 504 when none comes in time."
    else:
        mode = "Answers 202 once the broker has taken the command."
    return f"{mode}\n\nRequired roles: {roles}."
