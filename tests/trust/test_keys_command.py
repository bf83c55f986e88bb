"""``baton keys``: make a key, list the ring, retire a key with a grace period."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from baton.cli import main as baton
from messaging.keyring import KeyRing, SigningKey


def test_generate_list_and_retire(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring_file = tmp_path / "ring.json"
    for _ in range(2):
        assert (
            baton(
                [
                    "keys",
                    "generate",
                    "core",
                    "--dir",
                    str(tmp_path / "k"),
                    "--keyring",
                    str(ring_file),
                ]
            )
            == 0
        )
    old, new = sorted((tmp_path / "k").glob("core-*.key"))
    old_kid = SigningKey.load(old).kid

    assert (
        baton(["keys", "retire", old_kid, "--keyring", str(ring_file), "--grace", "60"])
        == 0
    )
    capsys.readouterr()
    assert baton(["keys", "list", "--keyring", str(ring_file)]) == 0

    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2
    ring = KeyRing.load(ring_file)
    retired = ring.get(old_kid)
    assert retired is not None and retired.retire_after is not None
    assert time.time() + 50 < retired.retire_after < time.time() + 70
    kept = ring.get(SigningKey.load(new).kid)
    assert kept is not None and kept.retire_after is None
    assert old.stat().st_mode & 0o077 == 0


def test_retiring_an_unknown_key_fails_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ring_file = tmp_path / "ring.json"
    KeyRing().save(ring_file)

    assert baton(["keys", "retire", "nope", "--keyring", str(ring_file)]) == 1
    assert "key 'nope' is not in the ring" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("grace", "warned"), [("900", True), ("0", False), ("3630", False), (None, False)]
)
def test_retiring_with_a_grace_shorter_than_the_origin_ttl_warns(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    grace: str | None,
    warned: bool,
) -> None:
    ring_file = tmp_path / "ring.json"
    key = SigningKey.generate("edge")
    KeyRing([key.public()]).save(ring_file)
    extra = [] if grace is None else ["--grace", grace]

    assert baton(["keys", "retire", key.kid, "--keyring", str(ring_file), *extra]) == 0

    err = capsys.readouterr().err
    assert ("shorter than BATON_ORIGIN_TTL (3600 s)" in err) is warned
    retired = KeyRing.load(ring_file).get(key.kid)
    assert retired is not None and retired.retire_after is not None
    expected = 3900 if grace is None else float(grace)
    assert abs(retired.retire_after - (time.time() + expected)) < 10
