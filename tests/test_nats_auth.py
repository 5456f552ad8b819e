"""NATS credentials from settings: the workers' connections authenticate; wrong ones fail clearly."""

from __future__ import annotations

import socket
import subprocess

import pytest

from pipeline import bus
from pipeline.contracts.errors import StartupError
from pipeline.contracts.settings import Settings
from pipeline.stack.ports import find_binary, free_port
from tests.waiting import until_sync


@pytest.fixture
def nats_with_password(tmp_path):
    port = free_port()
    proc = subprocess.Popen([find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                             str(tmp_path), "--user", "pipeline", "--pass", "s3cret"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    until_sync(listening, "nats-server listens", every_s=0.02)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


async def test_user_and_password_from_settings(nats_with_password):
    nc = await bus.connect(Settings(nats_url=nats_with_password, nats_user="pipeline", nats_password="s3cret"), "t")
    try:
        await bus.ensure_streams(nc.jetstream(), Settings(), bus.Names("auth"))
        assert nc.is_connected
    finally:
        await nc.close()


async def test_wrong_password_is_a_startup_error_without_the_secret(nats_with_password):
    with pytest.raises(StartupError) as info:
        # (A short connect timeout: the refusal is what is tested, not how long the client waits.)
        await bus.connect(Settings(nats_url=nats_with_password, nats_user="pipeline", nats_password="wrong-one",
                                   nats_connect_timeout_s=0.5), "t")
    assert "wrong-one" not in str(info.value)
    assert "repr" not in str(info.value)
    assert "wrong-one" not in repr(Settings(nats_password="wrong-one"))
