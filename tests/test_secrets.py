"""Credentials come from the environment or a TOML secrets file, and never show up in reprs or logs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import structlog

from adapters.errors import FatalError
from adapters.secrets import Credentials, env_names, load_credentials


def test_env_variables_are_named_after_the_exchange() -> None:
    assert env_names("binance") == {
        "api_key": "AI_TRADING_BINANCE_API_KEY",
        "secret": "AI_TRADING_BINANCE_SECRET",
        "password": "AI_TRADING_BINANCE_PASSWORD",
    }
    assert env_names("binance.us")["secret"] == "AI_TRADING_BINANCE_US_SECRET"
    with pytest.raises(FatalError, match="invalid exchange id"):
        env_names("bin ance")


def test_load_from_env() -> None:
    env = {"AI_TRADING_KRAKEN_API_KEY": "k1 ", "AI_TRADING_KRAKEN_SECRET": "s1", "AI_TRADING_KRAKEN_PASSWORD": "p1"}
    creds = load_credentials("kraken", env=env)
    assert creds is not None
    assert (creds.api_key, creds.secret, creds.password) == ("k1", "s1", "p1")
    assert creds.source == "AI_TRADING_KRAKEN_API_KEY, AI_TRADING_KRAKEN_SECRET, AI_TRADING_KRAKEN_PASSWORD"
    assert creds.secret_values() == ("k1", "s1", "p1")


def test_load_from_file_variables(tmp_path: Path) -> None:
    key_file, secret_file = tmp_path / "key", tmp_path / "secret"
    key_file.write_text("from-file-key\n")
    secret_file.write_text("from-file-secret\n")
    env = {"AI_TRADING_BINANCE_API_KEY_FILE": str(key_file), "AI_TRADING_BINANCE_SECRET_FILE": str(secret_file)}
    creds = load_credentials("binance", env=env)
    assert creds is not None and (creds.api_key, creds.secret) == ("from-file-key", "from-file-secret")
    with pytest.raises(FatalError, match=r"AI_TRADING_BINANCE_SECRET_FILE=.*missing.*cannot read"):
        load_credentials("binance", env=env | {"AI_TRADING_BINANCE_SECRET_FILE": str(tmp_path / "missing")})


def test_load_from_toml_secrets_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('[binance]\napi_key = "tk"\nsecret = "ts"\n\n[kraken]\napi_key = "kk"\nsecret = "ks"\n')
    os.chmod(path, 0o600)
    with structlog.testing.capture_logs() as logs:
        creds = load_credentials("binance", env={}, secrets_file=path)
    assert creds is not None and (creds.api_key, creds.secret, creds.password) == ("tk", "ts", None)
    assert creds.source == f"{path}[binance]"
    assert [e["event"] for e in logs] == ["credentials_loaded"]
    # The environment wins over the file.
    env = {"AI_TRADING_BINANCE_API_KEY": "ek", "AI_TRADING_BINANCE_SECRET": "es"}
    from_env = load_credentials("binance", env=env, secrets_file=path)
    assert from_env is not None and from_env.api_key == "ek"


def test_world_readable_secrets_file_warns(tmp_path: Path) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text('[binance]\napi_key = "tk"\nsecret = "ts"\n')
    os.chmod(path, 0o644)
    with structlog.testing.capture_logs() as logs:
        load_credentials("binance", env={}, secrets_file=path)
    (warning,) = [e for e in logs if e["event"] == "secrets_file_permissions_too_open"]
    assert warning["mode"] == "0o644" and warning["fix"] == f"chmod 600 {path}"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[binance\napi_key=", "not valid TOML"),
        ('binance = "x"', r"\[binance\] must be a table"),
        ('[binance]\napi_key = 1\nsecret = "s"', r"\[binance\]\.api_key must be a string"),
        ('[binance]\napi_key = "k"\nsecret = "s"\napi_secret = "s"', r"unknown keys \['api_secret'\]"),
        ('[binance]\napi_key = "k"', "incomplete API credentials for binance .*missing secret"),
    ],
)
def test_bad_secrets_file_is_a_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "secrets.toml"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(FatalError, match=problem):
        load_credentials("binance", env={}, secrets_file=path)


def test_missing_credentials_name_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="set AI_TRADING_BINANCE_API_KEY and AI_TRADING_BINANCE_SECRET"):
        load_credentials("binance", env={})
    assert load_credentials("binance", env={}, required=False) is None
    with pytest.raises(FatalError, match="missing AI_TRADING_BINANCE_SECRET"):
        load_credentials("binance", env={"AI_TRADING_BINANCE_API_KEY": "k"})
    with pytest.raises(FatalError, match=r"secrets file .*nope.toml: cannot read"):
        load_credentials("binance", env={}, secrets_file=tmp_path / "nope.toml")


def test_values_are_hidden_from_repr_and_logs() -> None:
    env = {"AI_TRADING_BINANCE_API_KEY": "KEY-123456", "AI_TRADING_BINANCE_SECRET": "SECRET-abcdef"}
    with structlog.testing.capture_logs() as logs:
        creds = load_credentials("binance", env=env)
    shown = repr(creds) + str(creds) + repr(logs) + f"{creds}"
    assert "KEY-123456" not in shown and "SECRET-abcdef" not in shown
    assert "api_key='***'" in repr(creds)
    with pytest.raises(FatalError, match="must be non-empty"):
        Credentials(api_key=" ", secret="s", source="test")
