"""The broker settings refuse values the topology could not honour, and say why."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError

from messaging.settings import MAX_RETRIES, BrokerSettings
from messaging.topology import QuorumQueues


def test_retry_delays_are_read_from_a_json_list(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BATON_RETRY_DELAYS", "[0.5, 0.5, 2]")

    settings = BrokerSettings()

    assert settings.retry_delays == (0.5, 0.5, 2.0)
    assert settings.topology().retry_delays == (0.5, 0.5, 2.0)


@pytest.mark.parametrize(
    ("delays", "says"),
    [
        ("[]", "is empty"),
        ("[30, 1]", "1.0 comes after 30.0"),
        ("[1, 5, 2]", "2.0 comes after 5.0"),
        ("[-5]", "-5.0 is outside"),
        ("[0]", "0.0 is outside"),
        ("[0.0001]", "0.0001 is outside"),
        ("[1, 172800]", "172800.0 is outside"),
        ('["NaN"]', "nan is outside"),
        (f"[{', '.join(['1'] * (MAX_RETRIES + 1))}]", f"over {MAX_RETRIES}"),
    ],
)
def test_retry_delays_that_cannot_grow_into_retries_are_refused_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, delays: str, says: str
):
    monkeypatch.setenv("BATON_RETRY_DELAYS", delays)

    with pytest.raises(ValidationError) as caught:
        BrokerSettings()

    message = str(caught.value)
    assert "retry_delays" in message
    assert says in message


def test_retry_delays_given_in_code_are_checked_too():
    with pytest.raises(ValidationError, match="comes after"):
        BrokerSettings(retry_delays=(30.0, 1.0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("auto", QuorumQueues.AUTO),
        ("true", QuorumQueues.TRUE),
        ("False", QuorumQueues.FALSE),
    ],
)
def test_quorum_queues_is_auto_true_or_false(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: QuorumQueues
):
    monkeypatch.setenv("BATON_QUORUM_QUEUES", value)

    settings = BrokerSettings()

    assert settings.quorum_queues is expected
    assert settings.topology().quorum is expected


def test_quorum_queues_default_to_auto_and_refuse_other_words(
    monkeypatch: pytest.MonkeyPatch,
):
    assert BrokerSettings().quorum_queues is QuorumQueues.AUTO
    monkeypatch.setenv("BATON_QUORUM_QUEUES", "sometimes")

    with pytest.raises(ValidationError, match="'auto', 'true' or 'false'"):
        BrokerSettings()


def test_every_broker_setting_is_in_the_readme_configuration_table():
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    documented = " ".join(row.split(" | ", 1)[0] for row in rows)

    for name, field in BrokerSettings.model_fields.items():
        variables = [f"BATON_{name.upper()}"]
        if isinstance(field.validation_alias, AliasChoices):
            variables = [str(alias) for alias in field.validation_alias.choices]
        missing = [v for v in variables if f"`{v}`" not in documented]
        assert missing == [], f"{name}: {missing} missing from the README table"
