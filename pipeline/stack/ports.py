"""Loopback ports and processes for the embedded servers: free ports, what a process listens on,
finding a server's binary, a one-shot HTTP probe.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import random
import shutil
import socket
import sys
import threading
from pathlib import Path

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "pip install 'tts-pipeline[embedded]'"


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
