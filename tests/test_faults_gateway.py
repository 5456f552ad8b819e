"""Fault suite, HTTP: the gateway under a schema-driven fuzzer (schemathesis, its OpenAPI document).

Every operation of `/openapi.json` gets examples that fit the schema and examples that break it
(wrong types, missing fields, bytes that are no JSON), derandomised so a run is reproducible.
The gateway runs with a real synth worker, stand-in and bus behind it, so valid requests really
synthesise. Whatever is sent, the answer must not be a 5xx.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable

from pipeline.contracts.subjects import Names
from tests.conftest import sim_stats
from tests.fault_fixtures import logs_to_this_test, observers, report, worker_procs  # noqa: F401 - fixtures
from tests.gateway_fixtures import gateway  # noqa: F401 - fixture
from tests.waiting import until

pytestmark = pytest.mark.faults

EXAMPLES_PER_MODE = 25  # per operation, once with valid and once with invalid data
READ_LIMIT_BYTES = 300


def fuzz(base_url: str, spec: dict, examples: int) -> dict:
    """Send schemathesis' cases to every operation; statuses counted, 5xx answers kept."""
    schema = schemathesis.openapi.from_dict(spec)
    statuses: collections.Counter = collections.Counter()
    per_operation: collections.Counter = collections.Counter()
    server_errors: list[str] = []
    unsendable = 0
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in schemathesis.GenerationMode:
                @given(case=operation.as_strategy(mode))
                @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.explicit, Phase.generate],
                                     suppress_health_check=list(HealthCheck))
                def send(case) -> None:
                    nonlocal unsendable
                    kwargs = case.as_transport_kwargs(base_url=base_url)
                    body = {}
                    if "json" in kwargs:
                        body["json"] = kwargs["json"]
                    elif isinstance(kwargs.get("data"), (bytes, str)):
                        body["content"] = kwargs["data"]
                    elif "data" in kwargs:
                        body["data"] = kwargs["data"]
                    try:
                        # Streamed: an event stream (/jobs/{id}/events) never ends by itself.
                        with client.stream(kwargs["method"], kwargs["url"], headers=kwargs.get("headers"),
                                           params=kwargs.get("params") or None, **body) as response:
                            statuses[response.status_code] += 1
                            per_operation[operation.label] += 1
                            if response.status_code >= 500:
                                head = next(response.iter_bytes(READ_LIMIT_BYTES), b"")[:READ_LIMIT_BYTES]
                                server_errors.append(f"{response.status_code} {kwargs['method']} {case.path} "
                                                     f"({mode.value}): {head.decode(errors='replace')}")
                    except (httpx.LocalProtocolError, UnicodeEncodeError, httpx.InvalidURL):
                        unsendable += 1  # e.g. a header value HTTP cannot carry: never left the client

                try:
                    send()
                except Unsatisfiable:  # nothing to break in an operation without inputs
                    assert mode is schemathesis.GenerationMode.NEGATIVE, operation.label
    return {"statuses": dict(sorted(statuses.items())), "server_errors": server_errors, "unsendable": unsendable,
            "requests": sum(statuses.values()), "per_operation": dict(per_operation)}


async def test_gateway_under_schemathesis_answers_no_5xx(sims, make_settings, gateway, worker_procs, observers):
    sim = sims()
    # Small limits keep each fuzzed synthesis short; the limits themselves are fuzzed too (413s).
    settings = make_settings(backend_urls=[sim.url], heartbeat_s=0.5, gateway_max_text_chars=200,
                             gateway_max_batch=4, gateway_request_timeout_s=30)
    observer = await observers(settings)
    worker_procs.start("synth", settings, "fuzz-worker")
    await observer.wait_heartbeat("fuzz-worker", procs=worker_procs)
    gw = gateway(settings)
    async with httpx.AsyncClient(base_url=gw.url, timeout=10, trust_env=False) as client:
        answer = await client.get("/openapi.json")
        assert answer.status_code == 200, f"/openapi.json answered {answer.status_code}: {answer.text[:300]}"
        spec = answer.json()
    started = time.monotonic()
    result = await asyncio.to_thread(fuzz, gw.url, spec, EXAMPLES_PER_MODE)
    operations = sum(len(methods) for methods in spec["paths"].values())
    report("8-gateway-fuzz", operations=operations, examples_per_operation_and_mode=EXAMPLES_PER_MODE,
           requests=result["requests"], statuses=result["statuses"], server_errors=len(result["server_errors"]),
           first_server_errors=result["server_errors"][:5], unsendable=result["unsendable"],
           seconds=round(time.monotonic() - started, 1))
    assert len(result["per_operation"]) == operations and min(result["per_operation"].values()) >= 1
    assert any(200 <= s < 300 for s in result["statuses"]) and any(400 <= s < 500 for s in result["statuses"])
    assert result["server_errors"] == [], "\n".join(result["server_errors"][:10])


async def test_a_worker_killed_mid_stream_loses_nothing_and_the_stream_completes(sims, make_settings, gateway,
                                                                                  worker_procs, observers):
    from tests.test_gateway_long import LONG_TEXT, STREAMED_PCM

    sim = sims(latency_s=1.0, slots=64)
    # One worker with two call slots takes the stream's first chunks; it is killed once the first
    # audio has arrived, and a second worker started then takes what it held after the ack wait.
    settings = make_settings(backend_urls=[sim.url], heartbeat_s=0.5, max_in_flight=2, ack_wait_s=3.0,
                             gateway_request_timeout_s=60)
    observer = await observers(settings)
    victim = worker_procs.start("synth", settings, "victim")
    await observer.wait_heartbeat("victim", procs=worker_procs)
    gw = gateway(settings)
    names = Names(settings.namespace)
    async with httpx.AsyncClient(base_url=gw.url, timeout=90, trust_env=False) as client:
        started = time.monotonic()
        async with client.stream("POST", "/v1/audio/speech", json=STREAMED_PCM) as resp:
            assert resp.status_code == 200
            chunks = int(resp.headers["X-Chunks"])
            pieces = resp.aiter_raw()
            streamed = [await anext(pieces)]
            worker_procs.kill(victim)  # SIGKILL
            # It died holding work: from the moment the first chunk answered, it holds that chunk
            # unacked (stored and acked only after the reply) or the next ones it pulled.
            held = await observer.js.consumer_info(names.synth_stream, names.synth_consumer("interactive"))
            assert held.num_ack_pending >= 1
            worker_procs.start("synth", settings, "survivor")
            streamed += [piece async for piece in pieces]
        # Complete: the same bytes as the whole answer, now every chunk from the store (once the
        # survivor has stored and acked what the victim held: replies go out before storing).
        async def stored() -> bool:
            return (await observer.js.stream_info(names.synth_stream)).state.messages == 0

        await until(stored, "every chunk of the stream is stored")
        whole = await client.post("/v1/audio/speech", json={**STREAMED_PCM, "stream": False})
        assert whole.status_code == 200 and whole.headers["X-Cache"] == "hit"
        assert b"".join(streamed) == whole.content
    report("9-worker-killed-mid-stream", chunks=chunks, chars=len(LONG_TEXT), held_by_the_killed_worker=
           held.num_ack_pending, stand_in_calls=sim_stats(sim)["calls"], seconds=round(time.monotonic() - started, 1))
    assert all(code == 0 for code in worker_procs.stop_all()[1:]), worker_procs.logs()
