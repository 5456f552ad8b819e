"""Fault suite, broker cluster: three nats-server nodes, R3 streams, one node SIGKILLed mid-batch."""

from __future__ import annotations

import time

import pytest

from pipeline import bus
from pipeline.contracts.settings import Settings
from tests.fault_fixtures import (  # noqa: F401 - fixtures
    PRODUCTION_RETRY, assert_no_loss, logs_to_this_test, make_requests, nats_cluster, observers, retry, sim_stats,
    worker_procs,
)

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
        assert (await observer.js.stream_info(stream)).config.num_replicas == 3
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


async def test_comma_separated_nats_urls_connect(stack):
    nc = await bus.connect(Settings(nats_url=f"{stack.nats.url},{stack.nats.url}"), name="comma")
    await nc.close()
