"""The JWKS key source: cache, cooldown against kid floods, rotation, outages."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from edge_api.errors import InvalidToken, KeysUnavailable
from edge_api.keys import JwksKeys
from edge_api.settings import EdgeSettings
from edge_api.tokens import TokenVerifier
from tests.edge.conftest import IdentityProvider, b64, forge_hs256, new_key

pytestmark = pytest.mark.asyncio

MakeVerifier = Callable[..., TokenVerifier]


@pytest_asyncio.fixture
async def make_verifier(
    edge_settings: EdgeSettings,
) -> AsyncIterator[MakeVerifier]:
    opened: list[JwksKeys] = []

    def make(
        *, url: str | None = None, cooldown: float = 30.0, ttl: float = 300.0
    ) -> TokenVerifier:
        keys = JwksKeys(
            url or edge_settings.jwks_url or "",
            algorithms=edge_settings.algorithms,
            timeout=1.0,
            cache_ttl=ttl,
            refresh_cooldown=cooldown,
        )
        opened.append(keys)
        return TokenVerifier(edge_settings, keys)

    yield make
    for keys in opened:
        await keys.aclose()


async def eventually_accepted(verifier: TokenVerifier, token: str) -> str:
    """Poll until the verifier accepts `token` (deadline 10 s); its subject."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            return (await verifier.principal(token)).subject
        except InvalidToken:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_keys_are_fetched_once_and_then_served_from_the_cache(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    verifier = make_verifier()

    for _ in range(20):
        await verifier.principal(idp.token())

    assert idp.server.fetches == 1


async def test_a_flood_of_unknown_kids_costs_one_refresh_per_cooldown(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    verifier = make_verifier(cooldown=2)
    await verifier.principal(idp.token())
    assert idp.server.fetches == 1
    await asyncio.sleep(2.1)  # the cooldown of the first fetch is over

    async def random_kid() -> str:
        stranger = new_key("ES256", kid=uuid.uuid4().hex)
        try:
            await verifier.principal(idp.sign(key=stranger))
        except InvalidToken as exc:
            return exc.reason
        return "accepted"

    # All at once, then one by one: the first unknown kid refreshes the keys,
    # the other 69 find the refresh done or still cooling down.
    reasons = await asyncio.gather(*(random_kid() for _ in range(50)))
    reasons += [await random_kid() for _ in range(20)]

    assert set(reasons) == {"the token's kid names no key we trust"}
    assert idp.server.fetches == 2


async def test_an_unknown_kid_refreshes_once_the_cooldown_is_over(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    verifier = make_verifier(cooldown=0)
    await verifier.principal(idp.token())
    stranger = new_key("ES256")

    with pytest.raises(InvalidToken):
        await verifier.principal(idp.sign(key=stranger))

    assert idp.server.fetches == 2


async def test_a_rotated_in_key_is_picked_up_and_a_retired_one_dropped(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    verifier = make_verifier(cooldown=0.2, ttl=0.5)
    old_token = idp.token("alice")
    await verifier.principal(old_token)

    rotated = new_key("EdDSA")
    idp.server.publish(rotated)
    new_token = idp.sign(idp.claims("bob"), key=rotated)

    assert await eventually_accepted(verifier, new_token) == "bob"
    deadline = asyncio.get_running_loop().time() + 10
    while asyncio.get_running_loop().time() < deadline:
        try:
            await verifier.principal(old_token)
        except InvalidToken as exc:
            assert exc.reason == "the token's kid names no key we trust"
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the retired key was still trusted after the cache expired")


async def test_an_outage_with_a_warm_cache_keeps_verifying(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    verifier = make_verifier(cooldown=0, ttl=0.01)
    await verifier.principal(idp.token())
    idp.server.failing = True
    fetches = idp.server.fetches

    await asyncio.sleep(0.05)  # let the cache go stale, so a refresh is attempted
    principal = await verifier.principal(idp.token("carol"))

    assert principal.subject == "carol"
    assert idp.server.fetches > fetches


async def test_an_outage_with_a_cold_cache_is_keys_unavailable(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    idp.server.failing = True
    verifier = make_verifier(cooldown=60)

    with pytest.raises(KeysUnavailable):
        await verifier.principal(idp.token())
    with pytest.raises(KeysUnavailable):
        await verifier.principal(idp.token())

    assert idp.server.fetches == 1


async def test_an_unreachable_key_server_is_keys_unavailable(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    verifier = make_verifier(url=f"http://127.0.0.1:{port}/jwks.json")

    with pytest.raises(KeysUnavailable):
        await verifier.principal(idp.token())


@pytest.mark.parametrize(
    "document",
    [
        {"keys": []},
        {"keys": "nope"},
        [],
        {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"}]},
        {"keys": [{"kty": "EC", "crv": "P-256", "kid": "broken"}]},
    ],
)
async def test_a_key_set_with_no_usable_key_is_keys_unavailable(
    make_verifier: MakeVerifier, idp: IdentityProvider, document: object
) -> None:
    idp.server.document = document  # type: ignore[assignment]
    verifier = make_verifier()

    with pytest.raises(KeysUnavailable):
        await verifier.principal(idp.token())


@pytest.mark.parametrize(
    "body",
    [b"[" * 50_000, b'{"keys": ' + b"[" * 50_000, b'{"keys": [], "keys": []}'],
    ids=["deep-array", "deep-keys", "repeated-keys"],
)
async def test_a_hostile_key_set_document_is_keys_unavailable(
    make_verifier: MakeVerifier, idp: IdentityProvider, body: bytes
) -> None:
    idp.server.raw = body
    verifier = make_verifier()

    with pytest.raises(KeysUnavailable) as caught:
        await verifier.principal(idp.token())

    assert "the key set is not usable JSON" in str(caught.value)


async def test_a_key_set_entry_with_odd_types_is_skipped_and_the_good_key_used(
    make_verifier: MakeVerifier, idp: IdentityProvider
) -> None:
    odd = [
        {**idp.key.public_jwk(), "kid": "listed-alg", "alg": ["ES256"]},
        {**idp.key.public_jwk(), "kid": "table-alg", "alg": {"ES256": 1}},
        {"kty": ["EC"], "kid": "listed-kty"},
        "not-a-key",
    ]
    idp.server.document = {"keys": [*odd, idp.key.public_jwk()]}
    verifier = make_verifier()

    principal = await verifier.principal(idp.token())
    forged = idp.sign(key=idp.key, headers={"kid": "listed-alg"})

    assert principal.subject == "alice"
    with pytest.raises(InvalidToken):
        await verifier.principal(forged)


async def test_a_symmetric_key_in_the_key_set_is_never_used(
    edge_settings: EdgeSettings, idp: IdentityProvider
) -> None:
    # The settings refuse HS256 beside a JWKS URL, so the verifier's allow-list
    # stops such a token first. Here that list is wrong on purpose (model_copy
    # skips validation), to show the key set itself never yields an HMAC key:
    # an issuer that publishes one has published its secret.
    secret = b"attacker-chosen-secret-attacker-chosen"
    hmac_jwk = {"kty": "oct", "k": b64(secret), "kid": "hmac", "alg": "HS256"}
    idp.server.document = {"keys": [idp.key.public_jwk(), {**hmac_jwk, "use": "sig"}]}
    careless = edge_settings.model_copy(update={"algorithms": ("ES256", "HS256")})
    keys = JwksKeys(
        idp.server.url,
        algorithms=careless.algorithms,
        timeout=1.0,
        cache_ttl=300,
        refresh_cooldown=30,
    )
    verifier = TokenVerifier(careless, keys)
    token = forge_hs256({"alg": "HS256", "kid": "hmac"}, idp.claims(), secret)
    try:
        with pytest.raises(InvalidToken) as caught:
            await verifier.principal(token)
        good = await verifier.principal(idp.token("bob"))
    finally:
        await keys.aclose()

    assert caught.value.reason == "the token's kid names no key we trust"
    assert good.subject == "bob"
