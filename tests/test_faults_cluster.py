"""Fault suite, broker cluster: three nats-server nodes, R3 streams, one node SIGKILLed mid-batch."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time

import nats
import nats.js.errors
import pytest
import structlog.testing

from pipeline import bus
from pipeline.contracts.settings import Settings
from pipeline.contracts.subjects import PRIORITIES, Names
from pipeline.stack.ports import find_binary, free_ports
from tests.fault_fixtures import (  # noqa: F401 - fixtures
    PRODUCTION_RETRY, NatsCluster, assert_no_loss, logs_to_this_test, make_requests, nats_cluster, observers, retry,
    sim_stats, worker_procs,
)
from tests.waiting import until

pytestmark = pytest.mark.faults


async def test_sigkill_the_stream_leader_of_an_r3_cluster_loses_nothing(sims, make_settings, nats_cluster, observers,
                                                                         worker_procs):
    total = 150
    sim = sims(latency_s=0.3, slots=512)
    settings = make_settings(nats_url=nats_cluster.urls[0], stream_replicas=3, backend_urls=[sim.url],
                             max_in_flight=16, ack_wait_s=4.0, heartbeat_s=0.5, **PRODUCTION_RETRY)
    observer = await observers(settings, servers=nats_cluster.urls)
    info = await retry(lambda: observer.js.stream_info(observer.names.synth_stream), "synth stream info")
    assert info.config.num_replicas == 3 and len(info.cluster.replicas) == 2
    for stream in (observer.names.events_stream, observer.names.dlq_stream):
        assert (await retry(lambda s=stream: observer.js.stream_info(s), "stream info")).config.num_replicas == 3
    leader = info.cluster.leader

    requests = make_requests("r3", total)
    assert await retry(lambda: observer.publish(requests), "publish") == (total, 0)
    started = time.monotonic()
    # The worker knows only the node about to die: it must fail over to the nodes the cluster
    # told it about, while the stream elects a new leader.
    worker_procs.start("synth", settings.model_copy(update={"nats_url": nats_cluster.node_url(leader)}),
                       "clustered")
    await observer.wait_outcomes("r3", 40, timeout_s=60, procs=worker_procs)
    nats_cluster.kill(leader)

    await observer.wait_outcomes("r3", total, timeout_s=90, procs=worker_procs)
    new_leader = (await retry(lambda: observer.js.stream_info(observer.names.synth_stream), "info")).cluster.leader
    assert new_leader != leader
    stats = sim_stats(sim)
    await assert_no_loss(observer, "r3", requests, "5-sigkill-cluster-node", faults_injected=1,
                         stand_in_calls=stats["calls"], killed=leader, new_leader=new_leader,
                         seconds=round(time.monotonic() - started, 1))
    assert total <= stats["calls"] <= total + settings.max_in_flight


async def test_set_up_waits_for_a_cluster_that_has_no_quorum_yet(tmp_path):
    """A worker starting while its cluster elects (here: one node of three up, no meta leader) waits
    for the cluster instead of dying on the first timeout or 503; it then creates R3 streams."""
    cluster = NatsCluster(tmp_path / "cluster")
    nc = None
    try:
        cluster.launch(0)
        await until(lambda: _accepts(cluster.client_ports[0]), "node 1 accepts clients")
        nc = await nats.connect(servers=cluster.urls[:1], max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = nc.jetstream(timeout=2)
        settings = Settings(nats_url=cluster.urls[0], stream_replicas=3)
        names = Names("quorum")
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(bus.set_up(js, settings, names, consumers=True, patience_s=120))
            await until(lambda: any(e["event"] == "bus.setup_retry" for e in logs) or task.done(),
                        "set-up meets a cluster without a leader")
            assert not task.done(), task.result()
            await asyncio.to_thread(cluster.start)  # the other two nodes: the cluster forms
            await asyncio.wait_for(task, 120)
        info = await retry(lambda: js.stream_info(names.synth_stream), "synth stream info")
        assert info.config.num_replicas == 3
        assert {c.name for c in await retry(lambda: js.consumers_info(names.synth_stream), "consumers")} == {
            names.synth_consumer(p) for p in PRIORITIES}
    finally:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        cluster.stop()


async def test_set_up_refuses_a_server_without_jetstream_at_once(tmp_path):
    port = free_ports(1)[0]
    proc = subprocess.Popen([find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        await until(lambda: _accepts(port), "nats-server accepts clients")
        nc = await nats.connect(f"nats://127.0.0.1:{port}")
        started = time.monotonic()
        with pytest.raises(nats.js.errors.ServiceUnavailableError):
            await bus.set_up(nc.jetstream(), Settings(), Names("nojs"))
        assert time.monotonic() - started < 30  # not retried until the patience runs out (60 s)
        await nc.close()
    finally:
        proc.kill()
        proc.wait()


async def test_comma_separated_nats_urls_connect(stack):
    nc = await bus.connect(Settings(nats_url=f"{stack.nats.url},{stack.nats.url}"), name="comma")
    await nc.close()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False
