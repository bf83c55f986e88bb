"""The identity test vectors, checked against this implementation.

Each vector under ``tests/vectors/identity/`` is turned into the bytes of an
AMQP header table and read back with pamqp, then decoded twice: as pairs, the
way a decoder that sees every key must read it, and as the dict aio-pika hands
a consumer.
"""

from __future__ import annotations

import pytest

from messaging import errors
from messaging.errors import IdentityError
from messaging.identity import decode_principal
from tests.vectors import format as vectors

SUITE = "identity"
VECTORS = vectors.load(SUITE)


def test_every_vector_file_holds_vectors():
    paths = vectors.files(SUITE)

    assert paths, f"no vector files in tests/vectors/{SUITE}"
    for path in paths:
        assert [v for v in VECTORS if v.file == path.name], f"{path.name} is empty"


def test_vector_names_are_unique():
    ids = [vector.id for vector in VECTORS]

    assert len(ids) == len(set(ids))


def test_each_vector_expects_exactly_one_outcome():
    for vector in VECTORS:
        assert (vector.principal is None) != (vector.error is None), vector.id


def test_each_expectation_is_well_formed():
    codes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, IdentityError)
    } - {"IdentityError"}
    fields = {"subject", "kind", "roles", "origin", "internal", "actors", "tenant"}

    for vector in VECTORS:
        if vector.error is not None:
            assert vector.error.keys() == {"code", "header"}, vector.id
            assert vector.error["code"] in codes, vector.id
        else:
            assert vector.principal is not None
            assert vector.principal.keys() == fields, vector.id
            assert vector.principal["roles"] == sorted(vector.principal["roles"])


@pytest.mark.parametrize("vector", VECTORS, ids=lambda vector: vector.id)
def test_vector_decoded_from_header_pairs(vector: vectors.Vector):
    pairs = vectors.decode_pairs(vectors.encode_table(vector.headers))

    _check(vector, pairs)


@pytest.mark.parametrize(
    "vector",
    [vector for vector in VECTORS if not vector.has_duplicate_keys()],
    ids=lambda vector: vector.id,
)
def test_vector_decoded_from_the_dict_a_consumer_receives(vector: vectors.Vector):
    table = vectors.decode_dict(vectors.encode_table(vector.headers))

    _check(vector, table)


@pytest.mark.parametrize(
    "vector",
    [vector for vector in VECTORS if vector.has_duplicate_keys()],
    ids=lambda vector: vector.id,
)
def test_pamqp_keeps_the_last_copy_of_a_duplicate_key(vector: vectors.Vector):
    # The hazard the duplicate vectors guard against: once pamqp has built its
    # dict, the first copy (the one the broker routes on) is gone without trace.
    raw = vectors.encode_table(vector.headers)

    assert vectors.decode_dict(raw) == dict(vectors.decode_pairs(raw))


def _check(vector: vectors.Vector, headers: object) -> None:
    if vector.error is None:
        principal = decode_principal(headers)  # type: ignore[arg-type]
        assert vectors.principal_as_json(principal) == vector.principal
        return

    with pytest.raises(IdentityError) as caught:
        decode_principal(headers)  # type: ignore[arg-type]
    assert caught.value.code == vector.error["code"]
    assert caught.value.header == vector.error["header"]
