"""Container health check for every role of the `tts-pipeline` image.

    python /opt/tts/healthcheck.py            auto: pick the check from the running role
    python /opt/tts/healthcheck.py http URL   GET URL; healthy on a 2xx answer
    python /opt/tts/healthcheck.py heartbeat  this container's synth worker has a live heartbeat
    python /opt/tts/healthcheck.py nats       NATS with JetStream answers with our credentials

Exit status 0 = healthy, 1 = unhealthy (one line on stderr says why), as Docker and Kubernetes
exec probes expect. `auto` reads the role from the command line of PID 1 (the image's entrypoint,
or `docker-init -- tts-pipeline ...` under `init: true`), so the image's one HEALTHCHECK works for
each role:

    gateway [--port N]  GET http://127.0.0.1:N/health (default $TTS_GATEWAY_PORT, else 8888)
    engine [--port N]   GET http://127.0.0.1:N/health (default 8000)
    worker synth        heartbeat
    other workers       nats
    HEALTHCHECK_URL set http on that URL, whatever the role

A synth worker writes a heartbeat every few seconds under `<hostname>-<pid>` (or
`TTS_WORKER_NAME`) into the `tts_workers` KV bucket, whose entries expire after a TTL; a live key
for this container means the worker's loop runs and reaches NATS.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_S = 4.0
DEFAULT_ENGINE_PORT = 8000
DEFAULT_GATEWAY_PORT = 8888


class Unhealthy(Exception):
    """The check ran and the answer was no."""


def check_http(url: str, timeout_s: float = TIMEOUT_S) -> None:
    # http.client, not urllib: urllib would honour HTTP_PROXY variables and ask a proxy.
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unhealthy(f"not an http URL: {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", parts.path or "/")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        raise Unhealthy(f"GET {url}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    if not 200 <= status < 300:
        raise Unhealthy(f"GET {url}: HTTP {status}")


async def _probe_tcp(nats_url: str) -> None:
    # A refused port fails here at once; nats-py may retry a first connect until our timeout.
    last = ""
    for url in nats_url.split(","):
        parts = urlsplit(url.strip() if "://" in url else f"nats://{url.strip()}")
        where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 4222}"  # no credentials in output
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 4222), TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            last = f"{where}: {type(exc).__name__}: {exc}"
            continue
        writer.close()
        return
    raise Unhealthy(f"cannot reach NATS at {last}")


async def _connect(settings):
    # The pipeline's own connect: the same URL and credential settings as the workers.
    from pipeline import bus
    from pipeline.contracts.errors import StartupError

    await _probe_tcp(settings.nats_url)
    try:
        return await bus.connect(settings, name="tts-healthcheck")
    except StartupError as exc:
        raise Unhealthy(str(exc)) from None


async def _check_nats() -> None:
    from pipeline.contracts.settings import Settings

    nc = await _connect(Settings())
    try:
        await nc.jetstream(timeout=TIMEOUT_S).account_info()
    except Exception as exc:
        raise Unhealthy(f"JetStream not available: {type(exc).__name__}: {exc}") from None
    finally:
        await nc.close()


async def _check_heartbeat() -> None:
    from nats.js.errors import NoKeysError, NotFoundError

    from pipeline.contracts.settings import Settings
    from pipeline.contracts.subjects import Names

    settings = Settings()
    bucket = Names(settings.namespace).workers_kv
    nc = await _connect(settings)
    try:
        kv = await nc.jetstream(timeout=TIMEOUT_S).key_value(bucket)
        keys = await kv.keys()
    except (NoKeysError, NotFoundError):
        keys = []
    except Exception as exc:
        raise Unhealthy(f"cannot read KV {bucket}: {type(exc).__name__}: {exc}") from None
    finally:
        await nc.close()
    if not any(heartbeat_is_ours(key, settings.worker_name) for key in keys):
        who = settings.worker_name or f"{socket.gethostname()}-<pid>"
        raise Unhealthy(f"no live heartbeat for {who} in KV {bucket}")


def heartbeat_is_ours(key: str, worker_name: str = "", hostname: str | None = None) -> bool:
    """True when a `tts_workers` key belongs to a worker of this container."""
    if worker_name:
        return key == worker_name
    prefix = f"{hostname or socket.gethostname()}-"
    return key.startswith(prefix) and key[len(prefix):].isdigit()


def role_from_cmdline(argv: list[str]) -> list[str]:
    """The arguments after the `tts-pipeline` executable in `argv`; [] when it is not there."""
    for i, arg in enumerate(argv):
        if Path(arg).name == "tts-pipeline":
            return argv[i + 1:]
    return []


def auto_check(role: list[str], env: dict[str, str]) -> tuple[str, ...]:
    """The explicit check (`("http", url)`, `("heartbeat",)`, `("nats",)`) for a role's arguments."""
    if env.get("HEALTHCHECK_URL"):
        return ("http", env["HEALTHCHECK_URL"])
    if role[:1] == ["gateway"]:
        port = _port_flag(role, int(env.get("TTS_GATEWAY_PORT") or DEFAULT_GATEWAY_PORT))
        return ("http", f"http://127.0.0.1:{port}/health")
    if role[:1] == ["engine"]:
        return ("http", f"http://127.0.0.1:{_port_flag(role, DEFAULT_ENGINE_PORT)}/health")
    if role[:2] == ["worker", "synth"]:
        return ("heartbeat",)
    return ("nats",)


def _import_pipeline() -> None:
    # Imports take seconds on a busy host: load them before the check's clock starts.
    import pipeline.bus  # noqa: F401
    import pipeline.contracts.settings  # noqa: F401
    import pipeline.contracts.subjects  # noqa: F401


def _port_flag(args: list[str], default: int) -> int:
    port = default
    for i, arg in enumerate(args):
        if arg == "--port" and i + 1 < len(args):
            port = int(args[i + 1])
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
    return port


def _pid1_argv() -> list[str]:
    raw = Path("/proc/1/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def run(args: list[str]) -> None:
    """Run one check; raises `Unhealthy` (or exits 2 on bad usage)."""
    if not args or args[0] == "auto":
        args = list(auto_check(role_from_cmdline(_pid1_argv()), dict(os.environ)))
    match args:
        case ["http", url]:
            check_http(url)
        case ["heartbeat"]:
            _import_pipeline()
            asyncio.run(asyncio.wait_for(_check_heartbeat(), TIMEOUT_S * 2))
        case ["nats"]:
            _import_pipeline()
            asyncio.run(asyncio.wait_for(_check_nats(), TIMEOUT_S * 2))
        case _:
            print(__doc__, file=sys.stderr)
            raise SystemExit(2)


def main() -> int:
    try:
        run(sys.argv[1:])
    except Unhealthy as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print("unhealthy: check timed out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
