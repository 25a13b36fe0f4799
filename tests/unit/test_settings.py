"""Settings: every invalid value fails at start-up with the variable's name."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hub.core.errors import ConfigError
from hub.core.settings import Settings

SECRET = "s" * 40


def rsa_public_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_defaults_are_the_documented_ones():
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.mongodb_db) == ("127.0.0.1", 8080, "hub")
    assert settings.max_body_chars == 4000
    assert settings.embedded and settings.embedded_mongodb and settings.embedded_redis
    assert settings.data_dir == Path(".hub-data")
    assert settings.listen_backlog == 1024


@pytest.mark.parametrize(
    "name, value",
    [
        ("HUB_PORT", "eighty"),
        ("HUB_PORT", "70000"),
        ("HUB_MONGODB_URL", "http://db:27017"),
        ("HUB_REDIS_URL", "localhost:6379"),
        ("HUB_MONGODB_DB", "bad/name"),
        ("HUB_JWT_SECRET", "short"),
        ("HUB_JWT_PUBLIC_KEY", "not a pem"),
        ("HUB_MAX_BODY_CHARS", "0"),
        ("HUB_RATE_CONN_PER_SEC", "-1"),
        ("HUB_EMBEDDED", "maybe"),
        ("HUB_LOG_LEVEL", "LOUD"),
        ("HUB_EVENT_LOOP", "trio"),
        ("HUB_LISTEN_BACKLOG", "0"),
    ],
)
def test_invalid_value_names_the_variable(name: str, value: str):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_production_mode_refuses_to_start_without_urls_or_key():
    with pytest.raises(ConfigError, match="HUB_MONGODB_URL and HUB_REDIS_URL"):
        Settings.from_env({"HUB_EMBEDDED": "0", "HUB_JWT_SECRET": SECRET})
    with pytest.raises(ConfigError, match="HUB_JWT_SECRET, HUB_JWT_PUBLIC_KEY, HUB_JWT_JWKS_URL"):
        Settings.from_env(
            {"HUB_EMBEDDED": "0", "HUB_MONGODB_URL": "mongodb://db", "HUB_REDIS_URL": "redis://r"}
        )


@pytest.mark.parametrize(
    "env, says",
    [
        ({"HUB_OIDC_ISSUERS": "not json"}, "not JSON"),
        ({"HUB_OIDC_ISSUERS": "[]"}, "non-empty JSON list"),
        ({"HUB_OIDC_ISSUERS": '[{"audience": "x"}]'}, "`issuer` URL"),
        ({"HUB_OIDC_ISSUERS": '[{"issuer": "https://a", "algorithms": ["HS256"]}]'}, "algorithms"),
        ({"HUB_OIDC_ISSUERS": '[{"issuer": "https://a", "role_map": {"x": "root"}}]'}, "role_map"),
        ({"HUB_OIDC_ISSUERS": '[{"issuer": "https://a", "typo": 1}]'}, "unknown fields"),
        ({"HUB_OIDC_ISSUERS": '[{"issuer": "https://a"}, {"issuer": "https://a"}]'}, "once"),
        ({"HUB_JWT_JWKS_URL": "https://a/jwks"}, "needs HUB_JWT_ISSUER"),
    ],
)
def test_identity_providers_are_checked_at_start_up(env: dict[str, str], says: str):
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


def test_one_provider_in_short_and_a_production_hub_with_providers_only():
    settings = Settings.from_env(
        {
            "HUB_EMBEDDED": "0",
            "HUB_MONGODB_URL": "mongodb://db",
            "HUB_REDIS_URL": "redis://r",
            "HUB_JWT_JWKS_URL": "https://sso.example/realms/a/certs",
            "HUB_JWT_ISSUER": "https://sso.example/realms/a",
            "HUB_JWT_AUDIENCE": "hub",
        }
    )
    (issuer,) = settings.oidc_issuers
    assert (issuer.issuer, issuer.jwks_url, issuer.audience) == (
        "https://sso.example/realms/a",
        "https://sso.example/realms/a/certs",
        "hub",
    )


def test_algorithms_are_pinned_to_the_kind_of_key():
    with pytest.raises(ConfigError, match="HUB_JWT_ALGORITHMS"):
        Settings.from_env({"HUB_JWT_SECRET": SECRET, "HUB_JWT_ALGORITHMS": "RS256"})
    with pytest.raises(ConfigError, match="HUB_JWT_ALGORITHMS"):
        Settings.from_env({"HUB_JWT_SECRET": SECRET, "HUB_JWT_ALGORITHMS": "none"})
    pem = rsa_public_pem()
    with pytest.raises(ConfigError, match="HUB_JWT_ALGORITHMS"):
        Settings.from_env({"HUB_JWT_PUBLIC_KEY": pem, "HUB_JWT_ALGORITHMS": "HS256"})
    assert Settings.from_env({"HUB_JWT_PUBLIC_KEY": pem}).jwt_algorithms == ("RS256",)
    with pytest.raises(ConfigError, match="ES256 cannot be used with an RSA"):
        Settings.from_env({"HUB_JWT_PUBLIC_KEY": pem, "HUB_JWT_ALGORITHMS": "RS256,ES256"})
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert Settings.from_env({"HUB_JWT_PUBLIC_KEY": ec_pem}).jwt_algorithms == ("ES256",)
    with pytest.raises(ConfigError, match="RS256 cannot be used with an EC"):
        Settings.from_env({"HUB_JWT_PUBLIC_KEY": ec_pem, "HUB_JWT_ALGORITHMS": "RS256"})


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("HUB_PORT", "abc", "HUB_PORT: must be a port number"),
        ("HUB_PORT", "70000", "HUB_PORT: must be a port number"),
        ("HUB_MAX_BODY_CHARS", "ten", "HUB_MAX_BODY_CHARS: must be a positive integer"),
        ("HUB_SMS_FALLBACK_AFTER", "soon", "HUB_SMS_FALLBACK_AFTER: must be a positive number"),
    ],
)
def test_invalid_numbers_are_explained_in_the_hubs_words(name: str, value: str, says: str):
    """Python's "invalid literal for int() with base 10" reached the operator."""
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({name: value})
    assert str(raised.value).startswith(says)
    assert "literal" not in str(raised.value)


def test_embedded_key_is_generated_once_and_private(tmp_path: Path):
    settings = Settings.from_env({"HUB_DATA_DIR": str(tmp_path / "data")})
    first = settings.with_embedded_jwt_secret()
    second = settings.with_embedded_jwt_secret()
    assert first.jwt_secret and first.jwt_secret == second.jwt_secret
    mode = stat.S_IMODE((tmp_path / "data" / "jwt-secret").stat().st_mode)
    assert mode == 0o600
