"""Batched seals: each message checks on its own, one signature serves the batch."""

from __future__ import annotations

import asyncio

import pytest

from messaging.keyring import SigningKey, b64
from messaging.sealing import (
    MAX_DEPTH,
    STEP_BYTES,
    BatchSealer,
    RootCache,
    SealError,
    leaf_hash,
    node_hash,
    paths,
    root_of,
    seal_batch,
    split,
)

KEY = SigningKey.generate("edge")
PUBLIC = KEY.public().key


def _claims(count: int) -> list[str]:
    return [b64(f'{{"mid":"m{i}"}}'.encode()) for i in range(count)]


def _open(token: str, cache: RootCache, key: SigningKey = KEY) -> str:
    claims, signature, path = split(token)
    root = root_of(leaf_hash(claims), path)
    public = PUBLIC if key is KEY else key.public().key
    cache.check(key.kid, public, root, signature)
    return claims


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 31, 100])
def test_every_seal_of_a_batch_opens_on_its_own(count: int) -> None:
    claims = _claims(count)

    sealed = seal_batch(KEY, claims)

    assert [_open(token, RootCache()) for token in sealed] == claims
    assert len({split(token)[1] for token in sealed}) == 1  # one signature


def test_a_batch_of_one_has_an_empty_path_and_its_leaf_as_root() -> None:
    [claims] = _claims(1)
    root, [path] = paths([leaf_hash(claims)])

    assert path == b""
    assert root == leaf_hash(claims)


def test_changed_claims_a_moved_path_or_another_key_do_not_open() -> None:
    a, b, c = seal_batch(KEY, _claims(3))
    claims_a, signature, path_a = a.split(".")
    claims_b = b.split(".")[0]
    other = SigningKey.generate("edge")

    with pytest.raises(SealError, match="does not verify"):
        _open(f"{claims_b}.{signature}.{path_a}", RootCache())
    with pytest.raises(SealError, match="does not verify"):
        _open(f"{claims_a}.{signature}.{c.split('.')[2]}", RootCache())
    with pytest.raises(SealError, match="does not verify"):
        _open(a, RootCache(), key=other)


def test_an_inner_node_cannot_pass_for_a_leaf() -> None:
    claims = _claims(4)
    first = seal_batch(KEY, claims)[0]
    _claims0, signature, path = split(first)
    leaves = [leaf_hash(c) for c in claims]

    # Without the leaf and node prefixes, "claims" made of a node's two
    # children and the path above that node would lead to the same root.
    children = b64(leaves[0] + leaves[1])
    forged = f"{children}.{b64(signature)}.{b64(path[STEP_BYTES:])}"

    assert leaf_hash(children) != node_hash(leaves[0], leaves[1])
    with pytest.raises(SealError, match="does not verify"):
        _open(forged, RootCache())


def test_malformed_seals_are_refused() -> None:
    [token] = seal_batch(KEY, _claims(1))
    claims, signature, _ = token.split(".")
    too_deep = b64(bytes(33 * (MAX_DEPTH + 1)))
    bad_side = b64(bytes((7,)) + bytes(32))

    with pytest.raises(SealError, match=r"claims\.signature\.path"):
        split(f"{claims}.{signature}")
    with pytest.raises(SealError, match="cannot be decoded"):
        split(f"{claims}.!!.")
    with pytest.raises(SealError, match="up to 16 steps"):
        _open(f"{claims}.{signature}.{too_deep}", RootCache())
    with pytest.raises(SealError, match="side 7"):
        _open(f"{claims}.{signature}.{bad_side}", RootCache())


def test_a_checked_root_is_checked_again_for_another_key_object() -> None:
    sealed = seal_batch(KEY, _claims(2))
    cache = RootCache()
    _open(sealed[0], cache)
    claims, _signature, path = split(sealed[1])
    root = root_of(leaf_hash(claims), path)

    # The same key read again (a ring reloaded) is checked afresh.
    with pytest.raises(SealError, match="does not verify"):
        cache.check(KEY.kid, KEY.public().key, root, bytes(64))


def test_a_checked_root_is_not_checked_again() -> None:
    sealed = seal_batch(KEY, _claims(8))
    cache = RootCache()
    _open(sealed[0], cache)

    # The root is known now: a seal with a broken signature but a valid path
    # still names a root this key signed, so it opens.
    claims, _signature, path = sealed[1].split(".")
    assert _open(f"{claims}.{b64(bytes(64))}.{path}", cache) == claims


@pytest.mark.asyncio
async def test_seals_asked_for_in_one_loop_turn_share_a_signature() -> None:
    sealer = BatchSealer(KEY)
    claims = _claims(10)

    together = await asyncio.gather(*(sealer.seal(c) for c in claims))
    alone = [await sealer.seal(c) for c in claims[:2]]

    assert len({split(token)[1] for token in together}) == 1
    assert len({split(token)[1] for token in alone}) == 2
    assert [_open(token, RootCache()) for token in together] == claims


@pytest.mark.asyncio
async def test_a_batch_is_sealed_once_it_is_full() -> None:
    sealer = BatchSealer(KEY, max_batch=4)

    sealed = await asyncio.gather(*(sealer.seal(c) for c in _claims(10)))

    assert len({split(token)[1] for token in sealed}) == 3  # 4 + 4 + 2
