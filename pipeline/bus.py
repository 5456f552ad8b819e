"""NATS connection, stream/consumer set-up and an exact-count pull for JetStream work queues.

Why a pull of our own: the synth worker must never hold more messages than it has free call
slots (a held message's ack deadline runs while it waits; faststream's `max_workers` pull
over-fetches, issue #2563), and it must be able to ask "anything interactive, right now?"
without waiting. nats-py's `fetch` always sends `expires`, which makes the server ignore
`no_wait` and hold an empty request for the whole timeout (measured: 50 ms probe = 50 ms).
`Puller.pull` sends `no_wait` alone for a probe, or `expires` alone for an idle wait, and reads
until it has the batch or the server's status line ends the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from pipeline.contracts.errors import StartupError
from pipeline.contracts.messages import WorkerHeartbeat
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import PRIORITIES, Names

log = structlog.get_logger("pipeline.bus")


def servers(settings: Settings) -> list[str]:
    """`TTS_NATS_URL` may list every node of a cluster, comma-separated."""
    return [url.strip() for url in settings.nats_url.split(",") if url.strip()]


def faststream_broker(settings: Settings):
    """A faststream NATS broker with the same servers, credentials and reconnect rule as `connect`."""
    from faststream.nats import NatsBroker

    return NatsBroker(servers(settings), logger=None, connect_timeout=settings.nats_connect_timeout_s,
                      max_reconnect_attempts=-1, **auth_options(settings))


def auth_options(settings: Settings) -> dict:
    """Credentials for nats-py (and faststream's broker, which passes them through)."""
    options: dict = {}
    if settings.nats_user:
        options["user"] = settings.nats_user
        options["password"] = settings.nats_password
    if settings.nats_creds_file:
        options["user_credentials"] = settings.nats_creds_file
    if settings.nats_nkey_seed_file:
        options["nkeys_seed"] = settings.nats_nkey_seed_file
    return options


async def connect(settings: Settings, name: str) -> NATS:
    """Connect; once connected, reconnect forever. State changes are logged, not tracebacks.

    A server that is not there, or refuses our credentials, at start-up raises `StartupError`
    with a one-line message within `2 * nats_connect_timeout_s + 1` seconds.
    """
    holder: list[NATS] = []
    first_errors: list[str] = []

    # nats-py's reconnect loop runs these callbacks: they must never raise (a failing log call
    # in one would stop the reconnects).
    async def on_error(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}".strip()
        if not holder:
            first_errors.append(text)  # reported once, in the StartupError
            return
        # Reconnect attempts fail here repeatedly while the server is away: one line each.
        with contextlib.suppress(Exception):
            log.warning("nats.error", error=text)

    async def on_disconnect() -> None:
        # Also called on our own close/drain, which is not worth a warning.
        if holder and (holder[0].is_closed or holder[0].is_draining):
            return
        with contextlib.suppress(Exception):
            log.warning("nats.disconnected", url=_redact(settings.nats_url))

    async def on_reconnect() -> None:
        with contextlib.suppress(Exception):
            log.info("nats.reconnected")

    # nats-py retries a first connect forever (whatever its reconnect options say), so the
    # first connect gets a deadline of its own.
    deadline_s = 2 * settings.nats_connect_timeout_s + 1.0
    try:
        nc = await asyncio.wait_for(nats.connect(
            servers(settings),
            name=name,
            connect_timeout=settings.nats_connect_timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
            **auth_options(settings),
        ), deadline_s)
    except Exception as exc:  # nats raises several unrelated types for "not there"
        cause = first_errors[-1] if first_errors else f"{type(exc).__name__}: {exc}".strip(": ")
        raise StartupError(f"cannot connect to NATS at {_redact(settings.nats_url)}: {cause}") from None
    holder.append(nc)
    return nc


def _redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)


async def ensure_streams(js: JetStreamContext, settings: Settings, names: Names) -> None:
    """Create or update the pipeline's streams. Safe to run from every process at start-up."""
    dup_s = settings.dedup_window_s
    replicas = settings.stream_replicas
    configs = [
        js_api.StreamConfig(
            name=names.chapters_stream,
            subjects=[names.chapters_all],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=dup_s,
            num_replicas=replicas,
        ),
        js_api.StreamConfig(
            name=names.synth_stream,
            subjects=[names.synth_all],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            duplicate_window=dup_s,
            num_replicas=replicas,
        ),
        js_api.StreamConfig(
            name=names.events_stream,
            subjects=[names.events_all],
            retention=js_api.RetentionPolicy.LIMITS,
            max_age=settings.events_max_age_s,
            duplicate_window=dup_s,
            num_replicas=replicas,
        ),
        js_api.StreamConfig(
            name=names.dlq_stream,
            subjects=[names.dlq_all],
            retention=js_api.RetentionPolicy.LIMITS,
            duplicate_window=dup_s,
            num_replicas=replicas,
        ),
    ]
    for config in configs:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    await workers_kv(js, names, replicas)
    await jobs_kv(js, names, replicas)


SETUP_PATIENCE_S = 60.0


def _transient(exc: Exception) -> bool:
    """A JetStream API answer that means "not now" rather than "no": a timeout or a 5xx (no meta
    leader during an election, a stream's leader moving). No responders means a server without
    JetStream: that is "no", reported at once."""
    if isinstance(exc, nats.errors.TimeoutError):
        return True
    return isinstance(exc, nats.js.errors.APIError) and (exc.code or 0) >= 500


async def set_up(js: JetStreamContext, settings: Settings, names: Names, consumers: bool = False,
                 patience_s: float = SETUP_PATIENCE_S) -> None:
    """`ensure_streams` (and `ensure_synth_consumers`), retried while the cluster answers "not now".

    Both are idempotent. A young or loaded R3 cluster can take longer than the client's timeout to
    create a replicated consumer (seen: 5 s on a busy 2-core CI machine); a process starting during an
    election gets 503s for a moment. Any other error is raised as it is; "not now" for longer than
    `patience_s` raises `StartupError` with one line.
    """
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            await ensure_streams(js, settings, names)
            if consumers:
                await ensure_synth_consumers(js, settings, names)
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".strip()
            if not _transient(exc):
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"NATS JetStream set-up did not succeed within {patience_s:.0f} s: {error}") from None
            log.warning("bus.setup_retry", error=error[:200])
            await asyncio.sleep(0.5)


async def ensure_synth_consumers(js: JetStreamContext, settings: Settings, names: Names) -> None:
    """Two durable pull consumers with disjoint filters (a work queue allows one per subject)."""
    for priority in PRIORITIES:
        config = js_api.ConsumerConfig(
            durable_name=names.synth_consumer(priority),
            filter_subject=names.synth(priority),
            ack_policy=js_api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            # Workers pull exactly what they can run; this bound only guards against a bug.
            max_ack_pending=-1,
            deliver_policy=js_api.DeliverPolicy.ALL,
        )
        await js.add_consumer(names.synth_stream, config)


WORKER_TTL_S = 15.0


async def workers_kv(js: JetStreamContext, names: Names, replicas: int = 1):
    """The `tts_workers` bucket: one key per live worker, gone `WORKER_TTL_S` after its last beat."""
    try:
        return await js.key_value(names.workers_kv)
    except Exception:
        return await js.create_key_value(js_api.KeyValueConfig(bucket=names.workers_kv, ttl=WORKER_TTL_S, history=1,
                                                               replicas=replicas))


async def kv_keys(kv) -> list[str]:
    """Every key of a KV bucket; [] for an empty one (nats-py raises NoKeysError for it)."""
    try:
        return await kv.keys()
    except Exception as exc:
        if type(exc).__name__ == "NoKeysError":
            return []
        raise


async def read_heartbeats(kv) -> list[WorkerHeartbeat]:
    """The live workers' last heartbeats in the `tts_workers` bucket `kv`. A key gone between the
    listing and its read (a worker just stopped) is left out; an unreadable beat is logged and left
    out; a failure to list raises."""
    beats = []
    for key in await kv_keys(kv):
        try:
            entry = await kv.get(key)
        except Exception:  # deleted or expired between keys() and get()
            continue
        if not entry.value:
            continue
        try:
            beats.append(WorkerHeartbeat.from_bytes(entry.value))
        except ValidationError:
            log.warning("bus.bad_heartbeat", key=key)
    return beats


async def jobs_kv(js: JetStreamContext, names: Names, replicas: int = 1):
    """The `tts_jobs` bucket: job and chapter state (no TTL)."""
    try:
        return await js.key_value(names.jobs_kv)
    except Exception:
        return await js.create_key_value(js_api.KeyValueConfig(bucket=names.jobs_kv, history=1, replicas=replicas))


@dataclass
class Puller:
    """Pulls from one durable consumer, never more than asked.

    Each pull request gets a reply subscription of its own, so pulls may overlap (an idle wait on
    a consumer while another pull is answered) without one request's status line ending another.
    """

    nc: NATS
    stream: str
    consumer: str

    def __post_init__(self) -> None:
        self._api = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        self._open: set = set()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False
        for sub in list(self._open):
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._open.clear()

    async def pull(self, batch: int, wait_s: float | None = None) -> list[Msg]:
        """Up to `batch` messages. `wait_s=None`: what is there now; else wait up to `wait_s`
        for the first one (the request then ends as soon as `batch` arrived or it expired)."""
        assert self._started, "start() first"
        request: dict[str, object] = {"batch": batch}
        if wait_s is None:
            request["no_wait"] = True
            deadline_s = 5.0  # the server answers a no_wait pull at once; this covers a lost reply
        else:
            request["expires"] = int(wait_s * 1e9)
            deadline_s = wait_s + 5.0
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        self._open.add(sub)
        msgs: list[Msg] = []
        try:
            await self.nc.publish(self._api, json.dumps(request).encode(), reply=inbox)
            loop = asyncio.get_running_loop()
            end = loop.time() + deadline_s
            while len(msgs) < batch:
                try:
                    msg = await sub.next_msg(timeout=max(0.001, end - loop.time()))
                except (asyncio.TimeoutError, nats.errors.TimeoutError, nats.errors.BadSubscriptionError):
                    break
                status = (msg.headers or {}).get("Status")
                if status is None and msg.reply:
                    msgs.append(msg)
                    continue
                if status == "100":  # idle heartbeat
                    continue
                break  # 404 no messages, 408 expired, 409 consumer changes: this request is over
        finally:
            self._open.discard(sub)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return msgs


def message_age_s(msg: Msg) -> float:
    """Seconds since the message was first stored in its stream (0 when unknown)."""
    import time

    try:
        return max(0.0, time.time() - msg.metadata.timestamp.timestamp())
    except Exception:
        return 0.0


def delivery_count(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


async def publish_acked(js: JetStreamContext, subject: str, payload: bytes, msg_id: str | None = None):
    """Publish to a stream with its de-duplication id; the server's ack (stream sequence, duplicate)."""
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    return await js.publish(subject, payload, headers=headers)


async def publish_json(js: JetStreamContext, subject: str, payload: bytes, msg_id: str | None = None) -> bool:
    """Publish to a stream; returns False when the server dropped it as a duplicate."""
    return not bool((await publish_acked(js, subject, payload, msg_id)).duplicate)
