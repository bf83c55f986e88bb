"""Principal, its constructors and hops, and the header encoding round trip."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pamqp import decode, encode

from messaging import headers as h
from messaging.errors import (
    BatonError,
    DuplicateHeader,
    HeaderSetTooLarge,
    HeaderTypeError,
    HeaderValueError,
    IdentityError,
    MissingHeader,
    UnknownHeader,
    UnsupportedVersion,
)
from messaging.identity import (
    MAX_ACTORS,
    Origin,
    Principal,
    PrincipalKind,
    decode_principal,
    encode_principal,
)


def alice(**changes: Any) -> Principal:
    return Principal.user("alice", ["reader", "planner"], entered_by="edge", **changes)


def over_the_wire(principal: Principal) -> Principal:
    """Encode as aio-pika would publish (pamqp), read back as a consumer gets it."""
    raw = encode.field_table(encode_principal(principal))
    return decode_principal(decode.field_table(raw)[1])


def test_user_from_http_is_external_and_entered_by_the_edge():
    user = alice()

    assert user.kind is PrincipalKind.USER
    assert user.origin is Origin.HTTP
    assert user.internal is False
    assert user.actors == ("edge",)
    assert user.roles == frozenset({"reader", "planner"})
    assert user.tenant is None


def test_user_whose_job_a_service_starts_is_internal():
    user = Principal.user("alice", entered_by="scheduler", origin=Origin.SCHEDULE)

    assert user.internal is True
    assert user.actors == ("scheduler",)
    assert user.roles == frozenset()


def test_service_principal_is_internal_and_its_own_first_actor():
    robot = Principal.service("scheduler", ["jobs"], origin=Origin.SCHEDULE)

    assert robot.kind is PrincipalKind.SERVICE
    assert robot.subject == "scheduler"
    assert robot.actors == ("scheduler",)
    assert robot.internal is True


def test_constructor_refuses_what_the_decoder_would_refuse():
    with pytest.raises(HeaderValueError) as caught:
        Principal.user("alice smith", entered_by="edge")

    assert caught.value.header == h.SUBJECT


def test_constructor_refuses_an_integer_for_internal():
    # What a careless caller does, and mypy would catch: the decoder catches it too.
    with pytest.raises(HeaderTypeError) as caught:
        dataclasses.replace(alice(), internal=1)  # type: ignore[arg-type]

    assert caught.value.header == h.INTERNAL


def test_constructor_refuses_a_user_from_http_marked_internal():
    with pytest.raises(HeaderValueError) as caught:
        dataclasses.replace(alice(), internal=True)

    assert caught.value.header == h.INTERNAL


def test_service_name_with_upper_case_is_refused():
    with pytest.raises(HeaderValueError) as caught:
        Principal.service("Scheduler", origin=Origin.SCHEDULE)

    assert caught.value.header == h.ACTORS


@pytest.mark.parametrize(
    "make",
    [
        lambda roles: Principal.user("alice", roles, entered_by="edge"),
        lambda roles: Principal.service("scheduler", roles, origin=Origin.SCHEDULE),
    ],
    ids=["user", "service"],
)
@pytest.mark.parametrize("roles", ["admin", b"admin", bytearray(b"admin")])
def test_a_single_string_for_roles_is_a_type_error_not_one_role_per_letter(
    make: Any, roles: Any
) -> None:
    # Every letter of "admin" is a valid role name: without the check the
    # principal would hold the roles a, d, i, m and n.
    with pytest.raises(TypeError, match="admin"):
        make(roles)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("roles", "admin"),
        ("roles", {"admin"}),
        ("actors", "edge"),
        ("actors", ["edge"]),
    ],
)
def test_the_constructor_refuses_roles_and_actors_of_another_collection_type(
    field: str, value: Any
) -> None:
    with pytest.raises(TypeError, match=field):
        dataclasses.replace(alice(), **{field: value})


def test_handed_to_keeps_who_the_work_is_for_and_appends_the_service():
    user = Principal.user("alice", ["reader"], entered_by="edge", tenant="acme")

    passed = user.handed_to("core", Origin.EVENT)

    assert passed.subject == user.subject
    assert passed.kind is user.kind
    assert passed.roles == user.roles
    assert passed.tenant == user.tenant
    assert passed.actors == ("edge", "core")
    assert passed.origin is Origin.EVENT
    assert passed.internal is True
    assert user.actors == ("edge",)
    assert user.internal is False


def test_handed_to_a_service_principal_keeps_the_service_as_subject():
    robot = Principal.service("scheduler", ["jobs"], origin=Origin.SCHEDULE)

    passed = robot.handed_to("core", Origin.REQUEST)

    assert passed.subject == "scheduler"
    assert passed.actors == ("scheduler", "core")
    assert passed.roles == frozenset({"jobs"})


def test_a_service_handing_work_to_itself_is_counted_again():
    passed = alice().handed_to("core", Origin.EVENT).handed_to("core", Origin.EVENT)

    assert passed.actors == ("edge", "core", "core")


def test_handed_to_refuses_http_as_the_way_a_hop_arrives():
    with pytest.raises(ValueError, match="event, request or schedule"):
        alice().handed_to("core", Origin.HTTP)


def test_handed_to_stops_at_the_actor_limit():
    principal = alice()
    for hop in range(MAX_ACTORS - 1):
        principal = principal.handed_to(f"svc-{hop}", Origin.EVENT)

    with pytest.raises(HeaderValueError) as caught:
        principal.handed_to("one-more", Origin.EVENT)

    assert len(principal.actors) == MAX_ACTORS
    assert caught.value.header == h.ACTORS


def test_has_roles_needs_every_required_role():
    user = alice()

    assert user.has_roles(["reader"])
    assert user.has_roles([])
    assert not user.has_roles(["reader", "admin"])


def test_encoding_uses_exact_python_types_for_each_amqp_type():
    table = encode_principal(alice(tenant="acme"))

    assert table == {
        h.VERSION: 1,
        h.SUBJECT: "alice",
        h.KIND: "user",
        h.ROLES: ["planner", "reader"],
        h.ACTORS: ["edge"],
        h.ORIGIN: "http",
        h.INTERNAL: False,
        h.TENANT: "acme",
    }
    assert type(table[h.VERSION]) is int
    assert type(table[h.INTERNAL]) is bool


def test_encoding_leaves_out_a_missing_tenant():
    assert h.TENANT not in encode_principal(alice())


@pytest.mark.parametrize(
    "principal",
    [
        alice(),
        alice(tenant="acme-eu"),
        alice().handed_to("core", Origin.EVENT).handed_to("users", Origin.REQUEST),
        Principal.user("bob", entered_by="scheduler", origin=Origin.SCHEDULE),
        Principal.service("scheduler", ["jobs", "admin"], origin=Origin.SCHEDULE),
        Principal.service("core", origin=Origin.EVENT).handed_to("core", Origin.EVENT),
    ],
    ids=["user", "tenant", "two-hops", "standing-job", "service", "service-hop"],
)
def test_round_trip_through_the_amqp_encoding_gives_the_same_principal(principal):
    assert over_the_wire(principal) == principal
    assert decode_principal(list(encode_principal(principal).items())) == principal


def test_decoding_accepts_header_pairs_and_refuses_a_repeated_key():
    pairs = [*encode_principal(alice()).items(), (h.SUBJECT, "mallory")]

    with pytest.raises(DuplicateHeader) as caught:
        decode_principal(pairs)

    assert caught.value.header == h.SUBJECT


def test_no_headers_at_all_is_a_missing_version():
    with pytest.raises(MissingHeader) as caught:
        decode_principal(None)

    assert caught.value.header == h.VERSION


def test_other_baton_headers_do_not_affect_identity():
    table: dict[str, Any] = encode_principal(alice())
    table.update({key: "anything" for key in h.KNOWN_HEADERS - h.IDENTITY_HEADERS})

    assert decode_principal(table) == alice()


def _nested(depth: int, bottom: object) -> object:
    value = bottom
    for level in range(depth):
        value = [value] if level % 2 else {"next": value}
    return value


@pytest.mark.parametrize("bottom", ["ok", b"\xff"], ids=["text", "not_utf8"])
def test_a_foreign_header_is_ignored_however_deep_and_whatever_it_holds(
    bottom: object,
):
    # Deeper than Python's recursion limit: the decoder never walks into it.
    table = {**encode_principal(alice()), "x-trace": _nested(10_000, bottom)}

    assert decode_principal(table) == alice()


def test_every_baton_header_is_in_the_namespace_and_none_in_rabbitmqs():
    for key in h.KNOWN_HEADERS:
        assert key.startswith(h.NAMESPACE), key
        assert not key.startswith("x-"), key


@pytest.mark.parametrize(
    ("change", "error", "header"),
    [
        ({h.VERSION: "1"}, HeaderTypeError, h.VERSION),
        ({h.VERSION: 2}, UnsupportedVersion, h.VERSION),
        ({h.INTERNAL: "false"}, HeaderTypeError, h.INTERNAL),
        ({h.ROLES: ["reader", "reader"]}, HeaderValueError, h.ROLES),
        ({"baton-admin": True}, UnknownHeader, "baton-admin"),
        (
            {h.ROLES: [f"role-{i:02d}-{'x' * 56}" for i in range(32)]},
            HeaderSetTooLarge,
            "baton-*",
        ),
    ],
    ids=["type", "version", "bool-string", "value", "unknown", "size"],
)
def test_each_error_names_the_header_and_the_rule(change, error, header):
    table = {**encode_principal(alice()), **change}

    with pytest.raises(error) as caught:
        decode_principal(table)

    assert isinstance(caught.value, IdentityError)
    assert isinstance(caught.value, BatonError)
    assert caught.value.header == header
    assert caught.value.code == error.__name__
    assert str(caught.value).startswith(f"{header}: ")
    assert caught.value.reason


def test_type_errors_name_the_amqp_type_received():
    table = {**encode_principal(alice()), h.INTERNAL: bytearray(b"true")}

    with pytest.raises(HeaderTypeError, match="must be a boolean, got byte array"):
        decode_principal(table)


def test_error_messages_escape_and_shorten_hostile_values():
    forged = "alice\nbaton-internal: true " + "x" * 200
    table = {**encode_principal(alice()), h.SUBJECT: forged}

    with pytest.raises(HeaderValueError) as caught:
        decode_principal(table)

    assert "\n" not in str(caught.value)
    assert "x" * 100 not in str(caught.value)


@pytest.mark.parametrize(
    "key", ["baton-x\nbaton-internal: true", "baton-\u202eadmin", "baton-a\u200b"]
)
def test_unknown_keys_are_named_escaped_when_they_hide_characters(key):
    table = {**encode_principal(alice()), key: True}

    with pytest.raises(UnknownHeader) as caught:
        decode_principal(table)

    assert caught.value.header == ascii(key)
    assert str(caught.value).isprintable()


def test_a_repeated_key_with_a_line_break_is_named_escaped():
    pairs = [*encode_principal(alice()).items(), ("x\ny", 1), ("x\ny", 2)]

    with pytest.raises(DuplicateHeader) as caught:
        decode_principal(pairs)

    assert caught.value.header == "'x\\ny'"
