"""The embedded servers, started for real: nats-server and weed must be installed (no skips)."""

from __future__ import annotations

import glob
import http.client
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import boto3
import nats
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from pipeline.stack.devstack import DevStack
from pipeline.stack.ports import (
    INSTALL_HINT, LOOPBACK, DevStackError, find_binary, free_ports, listening_addresses, port_is_free,
)
from pipeline.stack.seaweed import WEED_GRPC_OFFSET, WEED_MAX_PORT, S3Server
from pipeline.stack.servers import NatsServer

BUCKET = "devstack-test"


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def weed_tmp_sockets(s3: S3Server) -> list[str]:
    ports = set(s3.grpc_ports.values())
    return [
        path
        for path in glob.glob("/tmp/seaweedfs-*-grpc-*.sock")
        if int(path.rsplit("-", 1)[1].removesuffix(".sock")) in ports
    ]


def s3_client(s3: S3Server, *, secret_key: str | None = None):
    return boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=secret_key or s3.secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, proxies={}),
    )


async def connect(server: NatsServer):
    return await nats.connect(server.url, connect_timeout=2, max_reconnect_attempts=0)


def assert_loopback_only(pid: int, must_include: set[int]) -> None:
    addresses = listening_addresses(pid)
    assert must_include <= {port for _, port in addresses}, addresses
    assert {host for host, _ in addresses} == {LOOPBACK}, addresses


# ------------------------------------------------------------------------------ pure helpers


def test_missing_binary_names_the_package_to_install():
    with pytest.raises(DevStackError) as caught:
        find_binary("no-such-server-binary")
    message = str(caught.value)
    assert INSTALL_HINT in message and "no-such-server-binary" in message
    assert "\n" not in message


def test_weed_ports_leave_room_for_their_grpc_ports():
    ports = free_ports(5, grpc_offset=WEED_GRPC_OFFSET, below=WEED_MAX_PORT)
    grpc = {port + WEED_GRPC_OFFSET for port in ports}
    assert len(set(ports)) == 5 and not grpc & set(ports)
    assert all(port < WEED_MAX_PORT and port_is_free(port) for port in ports)
    assert all(port_is_free(port) for port in grpc)
    # Not handed out twice in one process, so servers started side by side cannot collide.
    assert not set(free_ports(5)) & (set(ports) | grpc)


# --------------------------------------------------------------------------------------- NATS


async def test_nats_jetstream_publish_then_stop(tmp_path: Path):
    server = NatsServer(tmp_path)
    with server:
        pid = server.pid
        assert pid is not None and server.url == f"nats://127.0.0.1:{server.port}"
        assert_loopback_only(pid, {server.port, server.monitor_port})
        nc = await connect(server)
        js = nc.jetstream()
        await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
        ack = await js.publish("devstack.hello", b"hi")
        assert (ack.stream, ack.seq) == ("DEVSTACK", 1)
        await nc.close()
    assert server.pid is None and process_gone(pid)
    assert port_is_free(server.port) and port_is_free(server.monitor_port)
    assert (tmp_path / "nats" / "jetstream").is_dir()
    assert "Server is ready" in (tmp_path / "logs" / "nats-server.log").read_text()


async def test_nats_kill_and_restart_keep_acked_message(tmp_path: Path):
    server = NatsServer(tmp_path).start()
    try:
        nc = await connect(server)
        js = nc.jetstream()
        await js.add_stream(name="DURABLE", subjects=["durable.>"])
        ack = await js.publish("durable.one", b"acked before the crash")
        await nc.close()

        port, old_pid = server.port, server.pid
        server.kill()
        assert process_gone(old_pid)
        server.restart()
        assert server.port == port and server.pid != old_pid

        nc = await connect(server)
        message = await nc.jetstream().get_msg("DURABLE", ack.seq)
        assert message.data == b"acked before the crash"
        await nc.close()
    finally:
        server.stop()


def test_taken_port_fails_with_server_address_and_log(tmp_path: Path):
    with NatsServer(tmp_path) as first:
        second = NatsServer(tmp_path / "second", port=first.port)
        with pytest.raises(DevStackError) as caught:
            second.start()
    assert "127.0.0.1 is already in use" in str(caught.value)
    assert str(first.port) in str(caught.value) and second.pid is None


def test_server_does_not_outlive_its_python_process(tmp_path: Path):
    script = textwrap.dedent(
        f"""
        from pipeline.stack.servers import NatsServer
        server = NatsServer({str(tmp_path)!r}).start()
        print(server.pid, flush=True)
        """
    )  # exits without stop(): the atexit hook must stop the server
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert process_gone(int(result.stdout.strip()))


# ----------------------------------------------------------------------------------------- S3


def test_s3_round_trip_credentials_and_clean_stop(tmp_path: Path):
    s3 = S3Server(tmp_path, access_key="devstack", secret_key="devstack-secret", bucket=BUCKET)
    with s3:
        pid = s3.pid
        assert pid is not None and s3.endpoint_url == f"http://127.0.0.1:{s3.port}"
        assert weed_tmp_sockets(s3), "weed should create its gRPC sockets in /tmp"

        client = s3_client(s3)
        client.put_object(Bucket=BUCKET, Key="a/b.txt", Body=b"payload")
        assert client.get_object(Bucket=BUCKET, Key="a/b.txt")["Body"].read() == b"payload"

        with pytest.raises(ClientError) as caught:
            s3_client(s3, secret_key="wrong-secret").get_object(Bucket=BUCKET, Key="a/b.txt")
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert caught.value.response["Error"]["Code"] in {"AccessDenied", "SignatureDoesNotMatch"}

        conn = http.client.HTTPConnection(LOOPBACK, s3.port, timeout=5)
        conn.request("GET", f"/{BUCKET}/a/b.txt")
        unsigned = conn.getresponse()
        assert unsigned.status == 403 and b"payload" not in unsigned.read()
        conn.close()
    assert s3.pid is None and process_gone(pid)
    assert weed_tmp_sockets(s3) == []
    assert all(port_is_free(port) for port in s3.ports.values())


def test_s3_kill_and_restart_keep_object_and_remove_sockets(tmp_path: Path):
    s3 = S3Server(tmp_path, bucket=BUCKET).start()
    try:
        s3.client().put_object(Bucket=BUCKET, Key="kept", Body=b"acked before the crash")
        ports, old_pid = dict(s3.ports), s3.pid
        s3.kill()
        assert process_gone(old_pid)
        assert weed_tmp_sockets(s3) == []
        s3.restart()
        assert s3.ports == ports
        body = s3.client().get_object(Bucket=BUCKET, Key="kept")["Body"].read()
        assert body == b"acked before the crash"
    finally:
        s3.stop()


# -------------------------------------------------------------------------------------- stack


def test_devstack_brings_both_up_on_loopback_and_down(tmp_path: Path):
    with DevStack(tmp_path / "data", bucket=BUCKET) as stack:
        nats_pid, s3_pid = stack.nats.pid, stack.s3.pid
        assert nats_pid is not None and s3_pid is not None
        assert_loopback_only(nats_pid, {stack.nats.port, stack.nats.monitor_port})
        # Every HTTP port and its gRPC port, on 127.0.0.1 and nowhere else.
        assert_loopback_only(s3_pid, set(stack.s3.ports.values()) | set(stack.s3.grpc_ports.values()))

        lines = stack.describe()
        assert f"nats  {stack.nats.url}" in lines[0] and f"s3    {stack.s3.endpoint_url}" in lines[1]
        stack.s3.client().head_bucket(Bucket=BUCKET)
        assert {"nats", "s3", "logs"} <= {p.name for p in (tmp_path / "data").iterdir()}
        assert {"nats-server.log", "weed.log", "weed"} <= {p.name for p in (tmp_path / "data" / "logs").iterdir()}
    assert process_gone(nats_pid) and process_gone(s3_pid)
    assert weed_tmp_sockets(stack.s3) == []
