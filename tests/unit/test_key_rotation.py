"""API keys held as digests, and key files read again when they change (serving/api/security.py Authenticator)."""

from __future__ import annotations

import logging
import os
import pickle

import pytest

from serving.api.security import Authenticator
from serving.config import AuthConfig
from serving.errors import AuthenticationError

OLD = "sk-old-key-000000000001"
NEW = "sk-new-key-000000000002"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path, *keys: str, stamp: int) -> None:
    path.write_text("".join(f"{k}\n" for k in keys))
    os.utime(path, ns=(stamp, stamp))  # a distinct mtime, whatever the file system's resolution


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "keys"
    write(path, OLD, stamp=10**18)
    clock = Clock()
    cfg = AuthConfig(api_keys_env=None, api_keys_file=str(path), key_file_check_s=5.0)
    return path, clock, Authenticator.from_config(cfg, clock=clock)


def test_keys_are_held_only_as_digests(setup):
    _, _, auth = setup
    held = pickle.dumps(list(auth._table))
    assert OLD.encode() not in held and OLD.encode() not in repr(vars(auth)).encode()
    assert auth.identify(f"Bearer {OLD}") == auth.identify(f"Bearer  {OLD} ")  # the same caller


def test_a_changed_key_file_is_read_within_the_check_period(setup):
    path, clock, auth = setup
    old_identity = auth.identify(f"Bearer {OLD}")
    write(path, NEW, stamp=2 * 10**18)
    clock.now += 4.0  # not yet checked again
    assert auth.identify(f"Bearer {OLD}") == old_identity
    clock.now += 1.5
    assert auth.identify(f"Bearer {NEW}")
    with pytest.raises(AuthenticationError):
        auth.identify(f"Bearer {OLD}")


def test_a_changed_file_without_usable_keys_keeps_the_previous_ones(setup, caplog):
    path, clock, auth = setup
    write(path, "# nothing but a comment", stamp=3 * 10**18)
    clock.now += 6
    with caplog.at_level(logging.ERROR, logger="serving.api.security"):
        assert auth.identify(f"Bearer {OLD}")  # still served: neither locked out nor open
    assert "previous keys stay" in caplog.text and OLD not in caplog.text
    with pytest.raises(AuthenticationError):
        auth.identify("Bearer sk-anyone-else-0000000")
    write(path, NEW, stamp=4 * 10**18)
    clock.now += 6
    assert auth.identify(f"Bearer {NEW}")
