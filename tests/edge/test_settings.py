"""Edge settings refuse configurations that would weaken token checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_api.settings import EdgeSettings
from tests.edge.conftest import IdentityProvider


def test_settings_refuse_a_leeway_over_a_minute(idp: IdentityProvider) -> None:
    with pytest.raises(ValidationError, match="leeway"):
        EdgeSettings(jwks_url=idp.server.url, leeway=61)


def test_settings_refuse_mixing_hs256_with_asymmetric_algorithms(
    idp: IdentityProvider,
) -> None:
    with pytest.raises(ValidationError, match="HS256"):
        EdgeSettings(hs256_secret="s" * 40, algorithms=("HS256", "ES256"))
    with pytest.raises(ValidationError, match="HS256"):
        EdgeSettings(jwks_url=idp.server.url, algorithms=("HS256",))
    with pytest.raises(ValidationError, match="exactly one key source"):
        EdgeSettings(jwks_url=idp.server.url, hs256_secret="s" * 40)


def test_settings_refuse_a_jwks_url_over_plain_http_off_loopback() -> None:
    with pytest.raises(ValidationError, match="https"):
        EdgeSettings(jwks_url="http://idp.example.com/jwks.json")


def test_settings_refuse_a_refresh_cooldown_that_would_let_a_flood_through(
    idp: IdentityProvider,
) -> None:
    with pytest.raises(ValidationError, match="jwks_refresh_cooldown"):
        EdgeSettings(jwks_url=idp.server.url, jwks_refresh_cooldown=0)
