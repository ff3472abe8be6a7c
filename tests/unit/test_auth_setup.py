"""Auth fails closed: key sources that give no usable key stop the start-up, with the reason and no key in it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.api.security import MIN_KEY_LENGTH, AuthSetupError, load_api_keys
from serving.config import AppConfig, AuthConfig, parse_app_args

ENV = "SERVING_TEST_AUTH_SETUP_KEYS"
GOOD = "sk-0123456789abcdef"
MODELS = [{"id": "m", "engine": "simulator"}]


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def keys_from_env(value: str | None, monkeypatch) -> list[bytes]:
    if value is not None:
        monkeypatch.setenv(ENV, value)
    return load_api_keys(AuthConfig(api_keys_env=ENV))


def test_default_is_keys_from_serving_api_keys():
    cfg = AppConfig.model_validate({"models": MODELS})
    assert cfg.auth.mode == "keys" and cfg.auth.api_keys_env == "SERVING_API_KEYS"


@pytest.mark.parametrize("value, problem", [(None, "is not set"), ("", "holds no key"), (" , ,", "holds no key")])
def test_env_that_gives_no_key_refuses_to_start(value, problem, monkeypatch):
    with pytest.raises(AuthSetupError, match=f"{ENV} .*{problem}.*auth: open"):
        keys_from_env(value, monkeypatch)


def test_env_keys(monkeypatch):
    assert keys_from_env(f" {GOOD} ,{GOOD}x", monkeypatch) == [GOOD.encode(), f"{GOOD}x".encode()]


@pytest.mark.parametrize(
    "key, problem",
    [
        ("sk-short", f"8 characters; keys must have at least {MIN_KEY_LENGTH}"),
        ("replace-me-key-1", "placeholder"),  # k8s/secret-example.yaml: 16 characters, refused all the same
        ("replace-me-key-2", "placeholder"),
        ("REPLACE-ME-please-1234", "placeholder"),
    ],
)
def test_short_and_example_keys_are_refused_without_showing_them(key, problem, monkeypatch):
    with pytest.raises(AuthSetupError, match=problem) as info:
        keys_from_env(f"{GOOD},{key}", monkeypatch)
    assert "key 2 of the environment variable" in str(info.value)
    assert key not in str(info.value)


def test_key_file_ignores_comments_and_blank_lines(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-12\n\n{GOOD}\n   # {GOOD}old\n  {GOOD}2  \n")
    keys = load_api_keys(AuthConfig(api_keys_env=None, api_keys_file=str(path)))
    assert keys == [GOOD.encode(), f"{GOOD}2".encode()]


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "does not exist"),
        ("", "holds no key"),
        ("# only a comment\n\n", "holds no key"),
        (b"\xff\xfe", "cannot be read"),
    ],
)
def test_key_file_that_gives_no_key_refuses_to_start(content, problem, tmp_path):
    path = tmp_path / "keys"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(AuthSetupError, match=problem):
        load_api_keys(AuthConfig(api_keys_env=None, api_keys_file=str(path)))


def test_key_file_that_is_a_directory(tmp_path):
    # a Secret mounted as a folder, the config naming the folder instead of the file in it
    with pytest.raises(AuthSetupError, match="cannot be read"):
        load_api_keys(AuthConfig(api_keys_env=None, api_keys_file=str(tmp_path)))


def test_both_sources_must_give_keys(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(GOOD)
    with pytest.raises(AuthSetupError, match="is not set"):  # the file alone is not enough when the env is named
        load_api_keys(AuthConfig(api_keys_env=ENV, api_keys_file=str(path)))
    monkeypatch.setenv(ENV, f"{GOOD}e")
    assert load_api_keys(AuthConfig(api_keys_env=ENV, api_keys_file=str(path))) == [f"{GOOD}e".encode(), GOOD.encode()]


def test_open_only_when_said():
    assert load_api_keys(parse_app_args({"models": MODELS, "auth": "open"}).auth) == []
    assert load_api_keys(parse_app_args({"models": MODELS, "auth": {"mode": "open"}}).auth) == []


@pytest.mark.parametrize(
    "auth, problem",
    [
        ({"mode": "open", "api_keys_file": "/etc/keys"}, "names a key source"),
        ({"mode": "open", "api_keys_env": "KEYS"}, "names a key source"),
        ({"api_keys_env": None}, "needs api_keys_env, api_keys_file or tenants"),
        ({"mode": "closed"}, "auth.mode"),
        ("opn", "auth"),
    ],
)
def test_bad_auth_configs(auth, problem):
    with pytest.raises((ValidationError, ValueError), match=problem):
        parse_app_args({"models": MODELS, "auth": auth})


def test_open_config_round_trips_through_the_replica_args():
    # build_from_config hands cfg.model_dump() to every replica, which validates it again
    cfg = parse_app_args({"models": MODELS, "auth": "open"})
    assert AppConfig.model_validate(cfg.model_dump()).auth.mode == "open"
