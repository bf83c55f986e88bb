"""The generated grants, checked against the declarations they come from."""

from __future__ import annotations

import re

import pytest

from baton.provision_commands import load_declarations
from messaging.declaration import ServiceDeclaration
from messaging.errors import TrustConfigError
from messaging.provision import AccountGrant, plan
from messaging.topology import Route, Topology
from tests.trust.services import DECLARATIONS

TOPOLOGY = Topology(prefix="baton")


def reference() -> list[ServiceDeclaration]:
    return load_declarations("baton.provision_commands:reference_declarations")


def matches(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


@pytest.mark.parametrize("declared", [DECLARATIONS, reference()], ids=["test", "ref"])
def test_no_account_can_use_the_default_exchange(
    declared: list[ServiceDeclaration],
) -> None:
    for grant in plan(TOPOLOGY, declared):
        for name in ("", "amq.default"):
            assert not matches(grant.write, name), (grant.user, name)
            assert not matches(grant.read, name), (grant.user, name)


@pytest.mark.parametrize("declared", [DECLARATIONS, reference()], ids=["test", "ref"])
def test_topic_rights_are_exactly_the_declared_types(
    declared: list[ServiceDeclaration],
) -> None:
    grants = {g.service: g for g in plan(TOPOLOGY, declared)}
    all_types = {
        *(s.message_type for d in declared for s in d.handlers),
        *(e.message_type for d in declared for e in d.emits),
        *(name for d in declared for name in d.requests),
    }
    for declaration in declared:
        grant: AccountGrant = grants[declaration.name]
        assert set(grant.topics) == {TOPOLOGY.commands, TOPOLOGY.events}
        for route in Route:
            write, read = grant.topics[TOPOLOGY.exchange_for(route)]
            for message_type in all_types | {"#", "*", ""}:
                assert matches(write, message_type) == declaration.publishes(
                    route, message_type
                ), (declaration.name, route, message_type)
                handled = any(
                    s.route is route and s.message_type == message_type
                    for s in declaration.handlers
                )
                assert matches(read, message_type) == handled


def test_no_account_may_read_or_configure_another_services_queues() -> None:
    grants = plan(TOPOLOGY, reference())
    for grant in grants:
        for other in grants:
            if other.service == grant.service:
                continue
            for queue in TOPOLOGY.service_queues(other.service):
                assert not matches(grant.read, queue), (grant.user, queue)
                assert not matches(grant.configure, queue), (grant.user, queue)
            reply = TOPOLOGY.reply_queue(other.service, "0123456789ab")
            assert not matches(grant.read, reply), (grant.user, reply)


def test_a_service_named_like_an_exchange_is_refused() -> None:
    with pytest.raises(TrustConfigError, match="named like an exchange"):
        plan(TOPOLOGY, [ServiceDeclaration(name="commands")])


def own_names(topology: Topology, service: str) -> set[str]:
    return {
        *topology.service_queues(service),
        *topology.service_exchanges(service),
        topology.reply_exchange(service),
        topology.reply_queue(service, "0123456789ab"),
    }


@pytest.mark.parametrize("declared", [DECLARATIONS, reference()], ids=["test", "ref"])
def test_no_account_may_configure_a_shared_exchange(
    declared: list[ServiceDeclaration],
) -> None:
    for grant in plan(TOPOLOGY, declared):
        for exchange in TOPOLOGY.exchanges():
            assert not matches(grant.configure, exchange), (grant.user, exchange)


@pytest.mark.parametrize("declared", [DECLARATIONS, reference()], ids=["test", "ref"])
def test_another_services_names_are_out_of_reach_but_the_replies_it_awaits(
    declared: list[ServiceDeclaration],
) -> None:
    by_name = {d.name: d for d in declared}
    for grant in plan(TOPOLOGY, declared):
        handled = by_name[grant.service].handled_types()
        for other in by_name.values():
            if other.name == grant.service:
                continue
            answers = bool(handled & other.requests)
            for name in own_names(TOPOLOGY, other.name):
                assert not matches(grant.read, name), (grant.user, name)
                assert not matches(grant.configure, name), (grant.user, name)
                may_write = answers and name == TOPOLOGY.reply_exchange(other.name)
                assert matches(grant.write, name) == may_write, (grant.user, name)


def test_a_service_answers_only_the_services_that_ask_it() -> None:
    grants = {g.service: g for g in plan(TOPOLOGY, DECLARATIONS)}

    assert matches(grants["core"].write, TOPOLOGY.reply_exchange("edge"))
    assert not matches(grants["audit"].write, TOPOLOGY.reply_exchange("edge"))
    assert matches(grants["edge"].read, TOPOLOGY.reply_exchange("edge"))
    assert not matches(grants["edge"].write, TOPOLOGY.reply_exchange("edge"))


def test_the_scheduler_declares_the_roles_it_acts_as_itself_with() -> None:
    (scheduler,) = (d for d in reference() if d.name == "scheduler")

    assert scheduler.roles == frozenset({"maintenance"})
    assert all(not d.roles for d in reference() if d.name != "scheduler")
