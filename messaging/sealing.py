"""Sealed claims: one Ed25519 signature vouches for a whole batch of messages.

An Ed25519 signature costs tens of microseconds to make and more to check, the
largest part of a signed message's price. A publisher that sends many messages
at once (a worker handling a burst, the edge under load) therefore signs them
together: each message's claims are a leaf of a Merkle tree, the publisher signs
the tree's root once, and each message carries its own claims, the signature
and the path from its leaf to the root. A consumer recomputes the root from the
path (a few SHA-256 of 65 bytes), checks the signature once per root and
remembers roots it has checked.

A seal reads ``claims "." signature "." path``, each part base64url without
padding:

    claims     the JSON claims; their bytes are the leaf
    leaf       SHA-256(0x00 || the base64url text of the claims)
    node       SHA-256(0x01 || left child || right child)
    path       steps from the leaf up: 0x00 + sibling on the left, or
               0x01 + sibling on the right (33 bytes each, at most 16)
    signature  Ed25519 over "baton-seal-1" || root

The leaf and node prefixes keep a leaf from passing for a node (the usual
second-preimage guard of Merkle trees). A batch of one has an empty path: its
root is its leaf. Which messages shared a batch, and in what order, says
nothing: every seal is checked on its own.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Final

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from messaging.keyring import SigningKey, b64, unb64

SEAL_CONTEXT: Final = b"baton-seal-1"
LEAF: Final = b"\x00"
NODE: Final = b"\x01"
LEFT: Final = 0
RIGHT: Final = 1
STEP_BYTES: Final = 33
MAX_DEPTH: Final = 16
MAX_BATCH: Final = 256
"""Seals made under one signature at most; a deeper tree only lengthens paths."""


class SealError(ValueError):
    """A seal is malformed or its signature does not verify."""


def leaf_hash(claims_b64: str) -> bytes:
    return hashlib.sha256(LEAF + claims_b64.encode("ascii")).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE + left + right).digest()


def paths(leaves: Sequence[bytes]) -> tuple[bytes, list[bytes]]:
    """The root of `leaves` and each leaf's path to it.

    Levels are built pairwise; an odd node at the end of a level moves up
    unchanged, so it gains no step on that level. Node ``i`` of a level has
    node ``i ^ 1`` as its sibling and becomes node ``i // 2`` of the next.
    """
    if not leaves:
        raise ValueError("a tree needs at least one leaf")
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        parents = [
            node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)
        ]
        if len(level) % 2:
            parents.append(level[-1])
        levels.append(parents)
    return levels[-1][0], [_path(levels, index) for index in range(len(leaves))]


def _path(levels: list[list[bytes]], index: int) -> bytes:
    steps = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            side = LEFT if sibling < index else RIGHT
            steps.append(bytes((side,)) + level[sibling])
        index //= 2
    return b"".join(steps)


def root_of(leaf: bytes, path: bytes) -> bytes:
    """The root that `path` leads to from `leaf`."""
    if len(path) % STEP_BYTES or len(path) > MAX_DEPTH * STEP_BYTES:
        raise SealError(f"a path is up to {MAX_DEPTH} steps of {STEP_BYTES} bytes")
    node = leaf
    for start in range(0, len(path), STEP_BYTES):
        side, sibling = path[start], path[start + 1 : start + STEP_BYTES]
        if side == RIGHT:
            node = node_hash(node, sibling)
        elif side == LEFT:
            node = node_hash(sibling, node)
        else:
            raise SealError(f"a path step names side {side}, not 0 or 1")
    return node


def seal_batch(key: SigningKey, claims_b64: Sequence[str]) -> list[str]:
    """Seal each of `claims_b64` (base64url claims) under one signature."""
    root, steps = paths([leaf_hash(claims) for claims in claims_b64])
    signature = b64(key.private.sign(SEAL_CONTEXT + root))
    return [
        f"{claims}.{signature}.{b64(path)}"
        for claims, path in zip(claims_b64, steps, strict=True)
    ]


def split(token: str) -> tuple[str, bytes, bytes]:
    """A seal's base64url claims, signature and path; SealError when malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise SealError("not of the form claims.signature.path")
    claims, signature, path = parts
    try:
        return claims, unb64(signature), unb64(path)
    except ValueError as exc:
        raise SealError(f"cannot be decoded: {exc}") from None


class RootCache:
    """Roots whose signature was checked, so that a batch costs one check.

    An entry stands only for the very key object it was checked with: a key
    ring read again (a rotation, a key withdrawn) starts the check afresh.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._checked: OrderedDict[tuple[str, bytes], Ed25519PublicKey] = OrderedDict()
        self._capacity = capacity

    def check(
        self, kid: str, public: Ed25519PublicKey, root: bytes, signature: bytes
    ) -> None:
        """Raise SealError unless `signature` by `public` vouches for `root`."""
        entry = (kid, root)
        if self._checked.get(entry) is public:
            self._checked.move_to_end(entry)
            return
        try:
            public.verify(signature, SEAL_CONTEXT + root)
        except _CryptoInvalidSignature:
            raise SealError("signature does not verify") from None
        self._checked[entry] = public
        if len(self._checked) > self._capacity:
            self._checked.popitem(last=False)


class BatchSealer:
    """Seals the claims handed in during one turn of the event loop together.

    :meth:`seal` queues the claims and waits; the first claims of a batch
    schedule its sealing for the end of the current loop iteration, by which
    time every publish started in the same iteration has queued its own.
    """

    def __init__(self, key: SigningKey, max_batch: int = MAX_BATCH) -> None:
        self.key = key
        self._max_batch = max_batch
        self._pending: list[tuple[str, asyncio.Future[str]]] = []

    async def seal(self, claims_b64: str) -> str:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending.append((claims_b64, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(self._seal_pending)
        elif len(self._pending) >= self._max_batch:
            self._seal_pending()
        return await future

    def _seal_pending(self) -> None:
        pending, self._pending = self._pending, []
        waiting = [(claims, future) for claims, future in pending if not future.done()]
        if not waiting:
            return
        try:
            sealed = seal_batch(self.key, [claims for claims, _ in waiting])
        except Exception as exc:  # noqa: BLE001 - each waiting publish gets the error
            for _, future in waiting:
                future.set_exception(exc)
            return
        for (_, future), token in zip(waiting, sealed, strict=True):
            future.set_result(token)
