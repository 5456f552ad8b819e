"""Start and stop the embedded servers: nats-server with JetStream, and SeaweedFS `weed mini` as S3.

Used by the session-scoped pytest fixtures and by `tts-pipeline up`. Everything binds 127.0.0.1
only, and everything a stack writes lives under one data directory:

    DATA/nats/   JetStream store          DATA/logs/nats-server.log   nats-server stdout+stderr
    DATA/s3/     SeaweedFS data           DATA/logs/weed.log          weed stdout+stderr
                                          DATA/logs/weed/             weed's own glog files

Each server runs in its own session (process group), so a Ctrl-C in a terminal reaches only our
Python process, which then stops the servers in order. Servers still running when the interpreter
exits normally are stopped by an atexit hook.
"""

from __future__ import annotations

import atexit
import http.client
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install 'tts-pipeline[embedded]'"

NATS_READY_TIMEOUT_S = 10.0
S3_READY_TIMEOUT_S = 20.0
# weed stops in ~1 s after SIGTERM, but about one stop in five hangs in its volume server's HTTP
# shutdown (waiting on open connections) until killed. By then the filer has closed its store, and
# acked objects survive SIGKILL anyway, so do not wait long.
STOP_TIMEOUT_S = 5.0

# The same defaults as `Settings.s3_access_key` / `s3_secret_key`, so that `tts-pipeline up` and
# every other command agree with no configuration.
DEFAULT_ACCESS_KEY = "tts-pipeline"
DEFAULT_SECRET_KEY = "tts-pipeline-secret"

# weed serves gRPC on every HTTP port + 10000 and names a unix socket in /tmp after each gRPC port.
WEED_GRPC_OFFSET = 10_000
WEED_MAX_PORT = 55_535
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
_WEED_TMP_SOCKET = "/tmp/seaweedfs-{component}-grpc-{port}.sock"

_LOG_TAIL_LINES = 20
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_SOCKET_PATH = 107


class DevStackError(RuntimeError):
    """A server of the embedded stack is missing, did not start, or did not become ready."""


# --------------------------------------------------------------------------------------- ports

_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:`port`, so a server could bind it now.

    With SO_REUSEADDR, as Go servers bind: connections of a dead server still in TIME_WAIT do not
    count as taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _port_range(offset: int, below: int) -> tuple[int, int]:
    # Stay under the kernel's ephemeral range, so outgoing connections made later (ours or anyone
    # else's) cannot land on a port we handed out but the server has not bound yet.
    low, high = 10_000, min(below, 65_536 - offset)
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 0
    if ephemeral_low - offset > low + 1000:
        high = min(high, ephemeral_low - offset)
    return low, high


def free_ports(count: int, *, grpc_offset: int = 0, below: int = 65_536) -> list[int]:
    """`count` distinct ports on 127.0.0.1 where nothing listens now.

    With `grpc_offset`, each port + offset is free too and no port of the set equals another's
    port + offset. Ports handed out earlier in this process are not handed out again, so servers
    started side by side do not collide. Another process can still take a port before the server
    binds it: starting a server handles that race.
    """
    low, high = _port_range(grpc_offset, below)
    chosen: list[int] = []
    taken: set[int] = set()
    with _handed_out_lock:
        for _ in range(2000):
            if len(chosen) == count:
                break
            port = random.randrange(low, high)
            needed = {port, port + grpc_offset}
            if needed & (taken | _handed_out):
                continue
            if all(port_is_free(p) for p in needed):
                chosen.append(port)
                taken |= needed
        else:
            raise DevStackError(f"no {count} free ports on {LOOPBACK} in {low}-{high - 1}")
        _handed_out.update(taken)
    return chosen


def free_port(*, grpc_offset: int = 0, below: int = 65_536) -> int:
    """One free port on 127.0.0.1 (see `free_ports`)."""
    return free_ports(1, grpc_offset=grpc_offset, below=below)[0]


# ------------------------------------------------------------------------- process inspection


def _parse_proc_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    # /proc/net/tcp{,6} prints each 32-bit word of the address in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """The (address, port) of every TCP socket that process `pid` listens on. Linux only."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: list[tuple[str, int]] = []
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                host, port = local.rsplit(":", 1)
                found.append((_parse_proc_address(host), int(port, 16)))
    return found


def _listening_ports(pid: int) -> set[int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return {port for _, port in listening_addresses(pid)}
    except OSError:  # the process is gone
        return set()


def find_binary(name: str) -> str:
    """The path of `name`: next to `sys.executable` (the venv's bin) first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DevStackError(f"{name} not found next to {sys.executable} or on PATH: {INSTALL_HINT}")
    return found


def _http_get(port: int, path: str, timeout_s: float) -> tuple[int, bytes] | None:
    # http.client, not urllib: urllib would honour HTTP_PROXY and send loopback traffic elsewhere.
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# ------------------------------------------------------------------------------------ servers


class _EarlyExit(DevStackError):
    """The server process exited while starting (often: a port was taken after we chose it)."""


class _Server:
    """One child process: launch, readiness, stop. Subclasses say how to run and probe it."""

    binary: str
    name: str
    ready_timeout_s: float
    poll_s: float

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.logs_dir = self.data_dir / "logs"
        self.log_path = self.logs_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # --- what subclasses provide ---
    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Create directories and files the command needs."""

    def _probe(self) -> bool:
        """One readiness check; True when ready."""
        raise NotImplementedError

    def _after_ready(self, deadline: float) -> None:
        """Work once the server answers (e.g. create a bucket)."""

    def _expected_ports(self) -> set[int]:
        """The TCP ports the process listens on once ready."""
        raise NotImplementedError

    def _choose_new_ports(self) -> None:
        """Replace the ports this object chose; ports given by the caller stay."""
        raise NotImplementedError

    def _cleanup_after_exit(self) -> None:
        """Remove what a dead process left behind."""

    @property
    def address(self) -> str:
        raise NotImplementedError

    # --- lifecycle ---
    @property
    def pid(self) -> int | None:
        """The pid of the running process, None when not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self) -> Self:
        """Start the server and return once it is ready.

        Ports chosen by this object (not given by the caller) that another process took in the
        meantime are replaced once with new ones. Raises DevStackError on failure, naming the
        server and its address, with the last lines of its log; no process is left behind.
        """
        return self._start(retry_ports=True)

    def restart(self) -> Self:
        """Stop the server if it runs, then start it again on the same ports and data directory."""
        self.stop()
        return self._start(retry_ports=False)

    def _start(self, *, retry_ports: bool) -> Self:
        if self.running:
            raise DevStackError(f"{self.name} already running at {self.address} (pid {self.pid})")
        binary = find_binary(self.binary)
        error: DevStackError | None = None
        for attempt in range(2 if retry_ports else 1):
            if attempt:
                self._choose_new_ports()
            # Checked first so that a port taken since we chose it costs no failed launch.
            busy = sorted(port for port in self._expected_ports() if not port_is_free(port))
            if busy:
                error = DevStackError(f"{self.name}: port {busy[0]} on {LOOPBACK} is already in use")
                continue
            try:
                self._launch_and_wait(binary)
                return self
            except _EarlyExit as exc:  # e.g. a port taken between the check and the bind
                error = exc
        assert error is not None
        raise error

    def _launch_and_wait(self, binary: str) -> None:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        command = self._command(binary)
        with open(self.log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {stamp} devstack start: {' '.join(command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self._signal_and_reap(signal.SIGKILL, timeout_s=STOP_TIMEOUT_S)
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self._proc.poll()
            if code is not None:
                raise _EarlyExit(self._failure(f"exited with code {code} while starting"))
            if self._probe() and self._owns_ports():
                break
            if time.monotonic() >= deadline:
                raise DevStackError(self._failure(f"not ready after {self.ready_timeout_s:g} s"))
            time.sleep(self.poll_s)
        self._after_ready(deadline)

    def _owns_ports(self) -> bool:
        # Guards against a stranger answering on a port we chose: our process must hold them.
        assert self._proc is not None
        listening = _listening_ports(self._proc.pid)
        return listening is None or self._expected_ports() <= listening

    def _failure(self, what: str) -> str:
        return f"{self.name} at {self.address} {what}; last lines of {self.log_path}:\n{self.log_tail()}"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines the server wrote since it was last started."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(log empty)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL. Returns once the process is gone."""
        self._signal_and_reap(signal.SIGTERM, timeout_s=timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests). Returns once the process is gone."""
        self._signal_and_reap(signal.SIGKILL, timeout_s=STOP_TIMEOUT_S)

    def _signal_and_reap(self, sig: signal.Signals, *, timeout_s: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            _killpg(proc.pid, sig)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
        atexit.unregister(self.stop)
        self._cleanup_after_exit()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class NatsServer(_Server):
    """nats-server with JetStream on 127.0.0.1, storing under DATA/nats."""

    binary = "nats-server"
    name = "nats-server"
    ready_timeout_s = NATS_READY_TIMEOUT_S
    poll_s = 0.01

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int | None = None,
        monitor_port: int | None = None,
    ) -> None:
        super().__init__(data_dir)
        self.store_dir = self.data_dir / "nats"
        self._given = (port, monitor_port)
        self._choose_new_ports()

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"

    @property
    def address(self) -> str:
        return self.url

    def _prepare(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "-a", LOOPBACK,
            "-p", str(self.port),
            "-js",
            "-sd", str(self.store_dir),
            "-m", str(self.monitor_port),
        ]  # fmt: skip

    def _probe(self) -> bool:
        answer = _http_get(self.monitor_port, "/healthz?js-enabled-only=true", timeout_s=1.0)
        return answer is not None and answer[0] == 200

    def _expected_ports(self) -> set[int]:
        return {self.port, self.monitor_port}

    def _choose_new_ports(self) -> None:
        port, monitor_port = self._given
        chosen = iter(free_ports((port is None) + (monitor_port is None)))
        self.port = port if port is not None else next(chosen)
        self.monitor_port = monitor_port if monitor_port is not None else next(chosen)


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


# -------------------------------------------------------------------------------------- stack


class DevStack:
    """nats-server and weed under one data directory, started and stopped together."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        nats_port: int | None = None,
        s3_port: int | None = None,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        bucket: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.nats = NatsServer(self.data_dir, port=nats_port)
        self.s3 = S3Server(
            self.data_dir, access_key=access_key, secret_key=secret_key, port=s3_port, bucket=bucket
        )

    def start(self) -> Self:
        """Start NATS, then S3; on failure, stop what started and raise DevStackError."""
        self.nats.start()
        try:
            self.s3.start()
        except BaseException:
            self.nats.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop S3, then NATS (reverse order of start). Safe to call twice."""
        try:
            self.s3.stop()
        finally:
            self.nats.stop()

    def describe(self) -> list[str]:
        """Lines for people: where each server listens and where its data and logs are."""
        lines = [
            f"nats  {self.nats.url}  (monitor {self.nats.monitor_url})",
            f"s3    {self.s3.endpoint_url}  (access key {self.s3.access_key})",
        ]
        if self.s3.bucket is not None:
            lines.append(f"bucket {self.s3.bucket}")
        lines += [f"data  {self.data_dir}", f"logs  {self.data_dir / 'logs'}"]
        return lines

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
