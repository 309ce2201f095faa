"""The sandbox's Redis settings and broker URLs, without starting it (the e2e Celery tests start it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudops.sandbox.credentials import CredentialStore
from cloudops.sandbox.layout import SandboxLayout
from cloudops.sandbox.redis import RedisServer

pytestmark = pytest.mark.unit


@pytest.fixture
def redis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RedisServer:
    monkeypatch.setenv("CLOUDOPS_SANDBOX_DIR", str(tmp_path / "sandbox"))
    monkeypatch.setenv("CLOUDOPS_SANDBOX_PORT_OFFSET", "7000")
    layout = SandboxLayout.from_environment()
    return RedisServer(layout, CredentialStore(tmp_path / "credentials.json"))


def test_redis_listens_on_loopback_with_a_password_and_persists_nothing(redis: RedisServer) -> None:
    settings = dict(line.split(" ", 1) for line in redis._config_text().splitlines() if " " in line)
    assert (settings["bind"], settings["port"]) == ("127.0.0.1", str(16390 + 7000))
    assert len(settings["requirepass"]) >= 24
    assert (settings["save"], settings["appendonly"]) == ('""', "no")
    # The config path stays in the process title: the pid file's marker.
    assert "{config-file}" in settings["proc-title-template"]
    assert redis.daemon.marker == str(redis.config)


def test_broker_urls_name_one_database_per_deployment(redis: RedisServer) -> None:
    assert redis.broker_url(0).endswith(f"@127.0.0.1:{redis.port}/0")
    assert redis.broker_url(1).endswith("/1")
    with pytest.raises(ValueError, match=r"0\.\.15"):
        redis.broker_url(16)
