"""Token verification against hostile tokens: every one must be refused, cleanly."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization

from edge_api.app import key_source
from edge_api.errors import InvalidToken
from edge_api.settings import EdgeSettings
from edge_api.tokens import TokenVerifier
from messaging.identity import Origin, PrincipalKind
from tests.edge.conftest import IdentityProvider, b64, forge, forge_hs256, new_key

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def verifier(edge_settings: EdgeSettings) -> AsyncIterator[TokenVerifier]:
    keys = key_source(edge_settings)
    try:
        yield TokenVerifier(edge_settings, keys)
    finally:
        await keys.aclose()


async def refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.principal(token)
    return caught.value.reason


async def test_a_good_token_becomes_a_user_principal_entered_by_the_edge(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    principal = await verifier.principal(idp.token("alice", ["planner", "reader"]))

    assert principal.subject == "alice"
    assert principal.kind is PrincipalKind.USER
    assert principal.roles == {"planner", "reader"}
    assert principal.actors == ("edge",)
    assert principal.origin is Origin.HTTP
    assert principal.internal is False


@pytest.mark.parametrize("algorithm", ["ES256", "EdDSA", "RS256"])
async def test_each_asymmetric_algorithm_verifies_with_its_own_key(
    verifier: TokenVerifier, idp: IdentityProvider, algorithm: str
) -> None:
    key = next(k for k in idp.keys if k.algorithm == algorithm)

    principal = await verifier.principal(idp.sign(key=key))

    assert principal.subject == "alice"


async def test_an_expired_token_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    now = int(time.time())
    token = idp.token(iat=now - 600, exp=now - 120)

    assert await refused(verifier, token) == "the token has expired"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
async def test_a_token_from_the_future_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider, claim: str
) -> None:
    early: dict[str, Any] = {claim: int(time.time()) + 600}
    token = idp.token(**early)

    assert await refused(verifier, token) == "the token is not valid yet"


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("iss", "https://idp.test", "the token's issuer is not trusted"),
        ("iss", "https://evil.test/", "the token's issuer is not trusted"),
        ("aud", "baton-edge-other", "the token is not meant for this audience"),
        ("aud", "baton", "the token is not meant for this audience"),
        ("aud", ["other"], "the token is not meant for this audience"),
    ],
)
async def test_issuer_and_audience_must_match_exactly(
    verifier: TokenVerifier, idp: IdentityProvider, claim: str, value: Any, reason: str
) -> None:
    assert await refused(verifier, idp.token(**{claim: value})) == reason


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud"])
async def test_a_token_missing_a_required_claim_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider, claim: str
) -> None:
    claims = idp.claims()
    del claims[claim]

    assert (
        await refused(verifier, idp.sign(claims))
        == f"the token lacks the {claim} claim"
    )


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("sub", 12345),
        ("sub", ["alice"]),
        ("exp", "9999999999"),
        ("exp", True),
        ("iat", "0"),
        ("iat", False),
        ("nbf", "0"),
        ("roles", "planner"),
        ("roles", [1, 2]),
        ("roles", [["planner"]]),
        ("roles", {"planner": True}),
        ("roles", ["planner", "no spaces allowed"]),
        ("roles", ["r" + str(i) for i in range(40)]),
    ],
)
async def test_a_claim_of_the_wrong_type_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider, claim: str, value: Any
) -> None:
    await refused(verifier, idp.token(**{claim: value}))


@pytest.mark.parametrize(
    "subject", ["", "-leading-dash", "has space", "x" * 300, "ünï"]
)
async def test_a_subject_that_makes_no_valid_principal_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider, subject: str
) -> None:
    reason = await refused(verifier, idp.token(sub=subject))

    assert "principal" in reason or "sub" in reason


async def test_roles_come_from_the_configured_claim(
    idp: IdentityProvider, edge_settings: EdgeSettings
) -> None:
    settings = edge_settings.model_copy(update={"roles_claim": "https://baton/roles"})
    keys = key_source(settings)
    verifier = TokenVerifier(settings, keys)
    try:
        namespaced: dict[str, Any] = {"https://baton/roles": ["planner"]}
        token = idp.token(roles=["admin"], **namespaced)
        principal = await verifier.principal(token)
    finally:
        await keys.aclose()

    assert principal.roles == {"planner"}


async def test_alg_none_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    header = {"alg": "none", "typ": "JWT", "kid": idp.key.kid}

    assert await refused(verifier, forge(header, idp.claims(), b"")) != ""
    reason = await refused(verifier, forge(header, idp.claims(), b"x"))
    assert reason == "the token's algorithm is not accepted"


async def test_an_hs256_token_signed_with_the_public_key_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    public_pem = idp.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": idp.key.kid}

    reason = await refused(verifier, forge_hs256(header, idp.claims(), public_pem))

    assert reason == "the token's algorithm is not accepted"


async def test_a_token_claiming_another_algorithm_than_its_key_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    eddsa = next(k for k in idp.keys if k.algorithm == "EdDSA")
    token = idp.sign(key=idp.key, headers={"kid": eddsa.kid})

    assert (
        await refused(verifier, token) == "the token's algorithm does not match its key"
    )


async def test_a_signature_from_a_key_we_do_not_trust_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    stranger = new_key("ES256", kid=idp.key.kid)

    assert await refused(verifier, idp.sign(key=stranger)) == (
        "the token's signature does not verify"
    )


async def test_a_tampered_payload_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider
) -> None:
    head, _payload, signature = idp.token("alice").split(".")
    claims = idp.claims("admin", ["planner", "maintenance"])
    import json

    forged = f"{head}.{b64(json.dumps(claims).encode())}.{signature}"

    assert await refused(verifier, forged) == "the token's signature does not verify"


@pytest.mark.parametrize(
    "injected",
    [
        {"jku": "https://evil.test/jwks.json"},
        {"x5u": "https://evil.test/cert.pem"},
        {"jwk": {"kty": "oct", "k": "c2VjcmV0"}},
        {"x5c": ["MIIB"]},
        {"crit": ["exp"]},
    ],
)
async def test_headers_that_bring_their_own_keys_or_extensions_are_refused(
    verifier: TokenVerifier, idp: IdentityProvider, injected: dict[str, Any]
) -> None:
    name = next(iter(injected))

    reason = await refused(verifier, idp.sign(headers=injected))

    assert reason == f"the token's header carries {name!r}"


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "/dev/null", "a" * 300, "kid with spaces", 7, ["k"]]
)
async def test_a_kid_that_is_not_a_plain_name_is_refused_without_a_fetch(
    verifier: TokenVerifier, idp: IdentityProvider, kid: Any
) -> None:
    await verifier.principal(idp.token())  # warm the cache
    fetches = idp.server.fetches

    header = {"alg": idp.key.algorithm, "typ": "JWT", "kid": kid}

    reason = await refused(verifier, forge(header, idp.claims(), b"signature"))

    assert reason == "the kid header is not a plain key name"
    assert idp.server.fetches == fetches


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-token",
        "a.b",
        "a.b.c.d",
        "e30.e30.e30",
        b64(b"[]") + "." + b64(b"{}") + ".c2ln",
        b64(b'{"alg":"ES256"') + "." + b64(b"{}") + ".c2ln",
        "\u00e9\u00e9.\u00e9.\u00e9",
        "x" * 10_000,
    ],
)
async def test_garbage_is_refused_as_an_invalid_token(
    verifier: TokenVerifier, token: str
) -> None:
    await refused(verifier, token)


async def test_no_log_line_contains_the_token(
    verifier: TokenVerifier, idp: IdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = idp.token()
    expired = idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200)
    unknown = idp.sign(key=new_key("ES256"))

    await verifier.principal(good)
    for token in (expired, unknown):
        await refused(verifier, token)

    assert caplog.records, "the verifier should have logged the key fetches"
    for token in (good, expired, unknown):
        signature = token.rsplit(".", 1)[1]
        assert signature not in caplog.text
        assert token not in caplog.text


async def test_hs256_works_only_when_configured_alone(idp: IdentityProvider) -> None:
    secret = "a-shared-secret-of-at-least-32-bytes!"
    settings = EdgeSettings(
        issuer="https://idp.test/",
        audience="baton-edge",
        hs256_secret=secret,
        algorithms=("HS256",),
    )
    keys = key_source(settings)
    verifier = TokenVerifier(settings, keys)
    good = forge_hs256({"alg": "HS256", "typ": "JWT"}, idp.claims(), secret.encode())
    other = forge_hs256({"alg": "HS256"}, idp.claims(), b"x" * 40)

    principal = await verifier.principal(good)
    reason = await refused(verifier, other)
    es256 = await refused(verifier, idp.token())

    assert principal.subject == "alice"
    assert reason == "the token's signature does not verify"
    assert es256 == "the token's algorithm is not accepted"


@pytest.mark.parametrize(
    "payload",
    [b"[]", b"not json", b'"alice"', b'{"sub": "alice", "exp": 1e400}', b"null"],
)
async def test_a_validly_signed_payload_that_is_no_claims_object_is_refused(
    verifier: TokenVerifier, idp: IdentityProvider, payload: bytes
) -> None:
    token = jwt.api_jws.encode(
        payload, idp.key.private, algorithm="ES256", headers={"kid": idp.key.kid}
    )

    await refused(verifier, token)


async def test_the_tenant_comes_from_the_configured_claim_and_must_be_a_name(
    idp: IdentityProvider, edge_settings: EdgeSettings
) -> None:
    settings = edge_settings.model_copy(update={"tenant_claim": "org"})
    keys = key_source(settings)
    verifier = TokenVerifier(settings, keys)
    try:
        acme = await verifier.principal(idp.token(org="acme"))
        untenanted = await verifier.principal(idp.token())
        numeric = await refused(verifier, idp.token(org=42))
        odd = await refused(verifier, idp.token(org="acme corp"))
    finally:
        await keys.aclose()

    assert acme.tenant == "acme"
    assert untenanted.tenant is None
    assert numeric == "the tenant claim must be a string"
    assert "principal" in odd
