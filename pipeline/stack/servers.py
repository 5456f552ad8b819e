"""A server of the embedded stack as a child process (launch, readiness, stop), and nats-server.

Each server runs in its own session (process group), so a Ctrl-C in a terminal reaches only our
Python process, which then stops the servers in order. Servers still running when the interpreter
exits normally are stopped by an atexit hook.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from pipeline.stack.ports import (
    LOOPBACK, DevStackError, _http_get, _listening_ports, find_binary, free_ports, port_is_free,
)

NATS_READY_TIMEOUT_S = 10.0
# weed stops in ~1 s after SIGTERM, but about one stop in five hangs in its volume server's HTTP
# shutdown (waiting on open connections) until killed. By then the filer has closed its store, and
# acked objects survive SIGKILL anyway, so do not wait long.
STOP_TIMEOUT_S = 5.0
_LOG_TAIL_LINES = 20

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
