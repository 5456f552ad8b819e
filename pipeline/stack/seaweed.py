"""SeaweedFS `weed mini` as the embedded stack's S3 server, under DATA/s3."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from pipeline.stack.ports import (
    LOOPBACK, DevStackError, _handed_out, _handed_out_lock, _http_get, _listening_ports, free_ports, port_is_free,
)
from pipeline.stack.servers import _Server

S3_READY_TIMEOUT_S = 20.0

# The same defaults as `Settings.s3_access_key` / `s3_secret_key`, so that `tts-pipeline up` and
# every other command agree with no configuration.
DEFAULT_ACCESS_KEY = "tts-pipeline"
DEFAULT_SECRET_KEY = "tts-pipeline-secret"

# weed serves gRPC on every HTTP port + 10000 and names a unix socket in /tmp after each gRPC port.
WEED_GRPC_OFFSET = 10_000
WEED_MAX_PORT = 55_535
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_WEED_TMP_SOCKET = "/tmp/seaweedfs-{component}-grpc-{port}.sock"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


class S3Server(_Server):
    """SeaweedFS `weed mini` serving S3 on 127.0.0.1, storing under DATA/s3.

    Credentials are enforced: requests must be signed with `access_key`/`secret_key`.
    """

    binary = "weed"
    name = "weed"
    ready_timeout_s = S3_READY_TIMEOUT_S
    poll_s = 0.05

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        port: int | None = None,
        bucket: str | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.access_key = access_key
        self.secret_key = secret_key
        self.bucket = bucket
        self.store_dir = self.data_dir / "s3"
        self.identities_path = self.store_dir / "identities.json"
        longest = self.store_dir / "filer.sock"
        if len(os.fsencode(longest)) > _MAX_UNIX_SOCKET_PATH:
            raise DevStackError(f"data directory too long for weed's unix sockets: {longest}")
        if port is not None and not 0 < port < WEED_MAX_PORT:
            raise DevStackError(f"S3 port {port} must be below {WEED_MAX_PORT} (gRPC uses port + 10000)")
        self._fixed_s3_port = port
        self.ports: dict[str, int] = {}
        self._seen_ports: set[int] = set()
        self._volumes_on_disk: set[int] = set()
        self._choose_new_ports()

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def address(self) -> str:
        return self.endpoint_url

    @property
    def grpc_ports(self) -> dict[str, int]:
        return {component: port + WEED_GRPC_OFFSET for component, port in self.ports.items()}

    def _choose_new_ports(self) -> None:
        if self._fixed_s3_port is None:
            self.ports = dict(zip(_WEED_COMPONENTS, self._free_weed_ports(5), strict=True))
        else:
            # The given S3 port (and its gRPC port) must not be handed to another component.
            with _handed_out_lock:
                _handed_out.update({self._fixed_s3_port, self._fixed_s3_port + WEED_GRPC_OFFSET})
            others = iter(self._free_weed_ports(4))
            self.ports = {c: self._fixed_s3_port if c == "s3" else next(others) for c in _WEED_COMPONENTS}

    @staticmethod
    def _free_weed_ports(count: int) -> list[int]:
        return free_ports(count, grpc_offset=WEED_GRPC_OFFSET, below=WEED_MAX_PORT)

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "pipeline",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(self.identities_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(identities, out)
        # Volume files are "<id>.dat" or "<collection>_<id>.dat".
        self._volumes_on_disk = {
            int(match.group(1))
            for path in self.store_dir.glob("*.dat")
            if (match := re.search(r"(?:^|_)(\d+)\.dat$", path.name))
        }
        # Sockets of a killed earlier run: ours under the data dir, weed's in /tmp.
        for stale in (self.store_dir / "s3.sock", self.store_dir / "filer.sock"):
            stale.unlink(missing_ok=True)
        self._remove_tmp_sockets(set(self.grpc_ports.values()))

    def _command(self, binary: str) -> list[str]:
        p = self.ports
        return [
            binary,
            # Before `mini`: a global flag; after it, weed would still log to /tmp.
            f"-logdir={self.logs_dir / 'weed'}",
            "mini",
            f"-dir={self.store_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.store_dir / 's3.sock'}",
            f"-filer.localSocket={self.store_dir / 'filer.sock'}",
            f"-s3.config={self.identities_path}",
            # One node: no one to hand traffic over to, so no pause before the volume server stops.
            "-volume.preStopSeconds=0",
        ]

    def _launch_and_wait(self, binary: str) -> None:
        (self.logs_dir / "weed").mkdir(parents=True, exist_ok=True)
        super()._launch_and_wait(binary)

    def _probe(self) -> bool:
        # S3 answers (unsigned, "/" gets 403) before the volume server has told the master about
        # the volumes already on disk; until it has, reads of existing objects fail. So after a
        # restart, ready means: S3 answers and the master knows every volume on disk.
        if _http_get(self.port, "/", timeout_s=1.0) is None:
            return False
        return self._volumes_on_disk <= self._volumes_known_to_master()

    def _volumes_known_to_master(self) -> set[int]:
        answer = _http_get(self.ports["master"], "/vol/status", timeout_s=1.0)
        if answer is None or answer[0] != 200:
            return set()
        try:
            topology = json.loads(answer[1])["Volumes"]["DataCenters"]
            return {
                volume["Id"]
                for racks in topology.values()
                for nodes in racks.values()
                for volumes in nodes.values()
                for volume in volumes
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            return set()

    def _expected_ports(self) -> set[int]:
        return set(self.ports.values())

    def _after_ready(self, deadline: float) -> None:
        assert self._proc is not None
        # weed moves a gRPC port it finds taken; remember the real ones for socket cleanup.
        self._seen_ports |= _listening_ports(self._proc.pid) or set()
        if self.bucket is not None:
            self._create_bucket(deadline)

    def client(self):  # -> a botocore S3 client
        """A boto3 S3 client for this server: its credentials, short timeouts, no proxy."""
        import boto3  # ~0.2 s to import: only S3 users pay for it
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
                # Empty, not None: with None botocore reads HTTP_PROXY and may send loopback
                # traffic to a proxy.
                proxies={},
            ),
        )

    def _create_bucket(self, deadline: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        s3 = self.client()
        delay_s = 0.05
        while True:
            try:
                s3.create_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                error = exc.response.get("Error", {})
                if error.get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
                    # A bad name does not get better with time.
                    raise DevStackError(f"weed refused bucket {self.bucket!r}: {exc}") from None
                last: Exception = exc
            except BotoCoreError as exc:
                last = exc
            # Right after start the filer can still refuse briefly: retry until the deadline.
            if time.monotonic() + delay_s >= deadline:
                raise DevStackError(self._failure(f"could not create bucket {self.bucket!r}: {last}"))
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.5)

    def _cleanup_after_exit(self) -> None:
        self._remove_tmp_sockets(set(self.grpc_ports.values()) | self._seen_ports)
        self._seen_ports = set()

    @staticmethod
    def _remove_tmp_sockets(ports: set[int]) -> None:
        # weed hard-codes these and leaves them after SIGKILL. Skip any port something listens on
        # now: its socket may belong to another live weed.
        for port in ports:
            if not port_is_free(port):
                continue
            for component in _WEED_COMPONENTS:
                Path(_WEED_TMP_SOCKET.format(component=component, port=port)).unlink(missing_ok=True)
