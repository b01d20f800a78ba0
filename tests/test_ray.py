"""The ray backend on a real two-node Ray cluster on this machine (CPU): the same app as the
ingress deployment, engine deployments whose replicas spread over both nodes.

Marked `ray` (a cluster and a deployment take ~30 s to start): `make test-ray` and .ci/run
run them; `make test` does not.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from PIL import Image

from app.main import create_app
from tests.conftest import LiveServer, free_port, make_settings
from tests.inprocess import upload
from tests.ray_cluster import RayCluster, wait_for
from tests.sse import read_events
from tests.test_stylize_api import ASYNC

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    os.environ["RAY_AUTH_MODE"] = "disabled"  # as the test cluster's nodes
    ray_cluster = RayCluster(free_port()).start()
    try:
        yield ray_cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        ray_cluster.stop()


def ray_settings(cluster: RayCluster, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        # A proxy on each node, both on one port (SO_REUSEPORT: the kernel spreads the
        # connections), each routing to the replicas of its own node first.
        "backend": "ray", "ray_address": cluster.address, "ray_proxy_location": "EveryNode",
        "ray_engine_replicas": 2, "ray_max_replicas_per_node": 1, "default_size": 48,
        "default_steps": 8, "progress_every": 2, "shutdown_grace_s": 2}
    return make_settings(**(values | overrides))


@pytest.fixture(scope="module")
def serve_port() -> int:
    return free_port()  # Serve's proxy keeps the port it started with across deployments


@pytest.fixture(scope="module")
def job_store(redis_server: Any) -> str:
    return f"{redis_server.url.rsplit('/', 1)[0]}/7"  # a database of its own


@pytest.fixture(scope="module")
def deployed(cluster: RayCluster, real_catalog: object, serve_port: int,
             job_store: str) -> Iterator[str]:
    from app.distributed.serving import deploy

    # Two ingress replicas sharing jobs through Redis; two engine replicas of each kind,
    # one per node.
    deploy(ray_settings(cluster, port=serve_port, ray_ingress_replicas=2,
                        job_store_url=job_store,
                        # One request per engine replica at a time (a CPU style worker runs
                        # one job at a time anyway): two jobs run on two replicas.
                        ray_max_ongoing_requests=1))
    yield f"http://127.0.0.1:{serve_port}"


def served_by(response: httpx.Response) -> tuple[str, str | None]:
    """(ingress replica, engine node) from X-Served-By."""
    ingress, _, engine = response.headers["x-served-by"].partition("; engine ")
    node = engine.rsplit(" on node ", 1)[1] if engine else None
    return ingress, node


def test_requests_land_on_engine_replicas_on_both_nodes_and_on_both_ingress_replicas(
        deployed: str, cluster: RayCluster) -> None:
    answers = [httpx.post(f"{deployed}/generate", json={"seed": i}, timeout=60)
               for i in range(40)]
    assert all(a.status_code == 200 for a in answers)
    places = [served_by(a) for a in answers]
    engine_nodes = {node for _, node in places}
    if not ray.is_initialized():
        ray.init(address=cluster.address)
    nodes = {n["NodeID"][:12]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    # One generate-engine replica per node (ATELIER_RAY_MAX_REPLICAS_PER_NODE=1), and the
    # requests reached both: the head node and the second node, each told by its resource.
    assert engine_nodes == set(nodes), (engine_nodes, nodes)
    assert {"head_node", "second_node"} == {
        r for node in engine_nodes for r in nodes[node] if r.endswith("_node")}
    assert len({ingress for ingress, _ in places}) == 2


def test_a_job_accepted_by_one_ingress_replica_is_followed_and_fetched_through_another(
        deployed: str) -> None:
    created = httpx.post(f"{deployed}/stylize", files=upload(), headers=ASYNC,
                         data={"size": "32", "steps": "6"}, timeout=60)
    assert created.status_code == 202, created.text
    job_id, accepted_by = created.json()["id"], served_by(created)[0]
    # Each new connection may reach the other node's proxy, which routes to its own node's
    # ingress replica: follow the job on a connection that reached the other one.
    for _ in range(50):
        client = httpx.Client(base_url=deployed, timeout=60)
        if served_by(client.get(f"/jobs/{job_id}"))[0] != accepted_by:
            break
        client.close()
    else:
        raise AssertionError("every connection went to the replica that accepted the job")
    try:  # the same connection, so the same proxy and (its node's) ingress replica
        events = read_events(client, f"/jobs/{job_id}/events")
    finally:
        client.close()
    assert events[-1].event == "succeeded"
    fetched = {}
    for _ in range(50):
        result = httpx.get(f"{deployed}/jobs/{job_id}/result", timeout=60)
        fetched[served_by(result)[0]] = (result.status_code, result.content)
        if len(fetched) == 2:
            break
    assert len(fetched) == 2, "the result was not fetched through both replicas"
    (status_a, image_a), (status_b, image_b) = fetched.values()
    assert status_a == status_b == 200 and image_a == image_b


def job_document(url: str, job_id: str) -> dict[str, Any]:
    document: dict[str, Any] = httpx.get(f"{url}/jobs/{job_id}", timeout=30).json()
    return document


def pixels(data: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_seed_gives_the_same_image_on_ray_as_on_the_local_backend(deployed: str) -> None:
    with LiveServer(create_app(make_settings())) as local:
        for seed in (3, 11):
            body = {"seed": seed, "n": 2}
            on_ray = httpx.post(f"{deployed}/generate", json=body, timeout=60)
            here = httpx.post(f"{local.url}/generate", json=body, timeout=60)
            assert on_ray.status_code == 200, on_ray.text
            assert on_ray.headers["x-seed"] == str(seed)
            assert np.array_equal(pixels(on_ray.content), pixels(here.content))


def test_a_style_job_streams_its_progress_and_result_from_an_engine_replica(
        deployed: str) -> None:
    created = httpx.post(f"{deployed}/stylize", files=upload(), headers=ASYNC,
                         data={"size": "32", "steps": "6"}, timeout=60)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    with httpx.Client(base_url=deployed, timeout=60) as client:
        events = read_events(client, f"/jobs/{job_id}/events")
    kinds = [e.event for e in events]
    assert kinds[-1] == "succeeded" and "progress" in kinds
    steps = [e.data["step"] for e in events if e.event == "progress"]
    assert steps == sorted(steps) and steps[-1] == 6
    result = httpx.get(f"{deployed}/jobs/{job_id}/result", timeout=30)
    assert result.status_code == 200 and max(Image.open(io.BytesIO(result.content)).size) == 32


def test_cancelling_a_job_reaches_the_replica_that_runs_it(deployed: str) -> None:
    job_id = httpx.post(f"{deployed}/stylize", files=upload(), headers=ASYNC,
                        data={"size": "48", "steps": "2000"}, timeout=60).json()["id"]
    wait_for(lambda: job_document(deployed, job_id)["step"] > 0, 60, "the job to run")
    started = time.monotonic()
    cancelled = httpx.delete(f"{deployed}/jobs/{job_id}", timeout=30).json()
    assert cancelled["status"] == "canceled"
    assert time.monotonic() - started < 5
    stopped_at = job_document(deployed, job_id)["step"]
    assert stopped_at < 2000
    # The replica stopped stepping it: its worker is free for the next job at once.
    quick = httpx.post(f"{deployed}/stylize", files=upload(), data={"size": "32", "steps": "3"},
                       timeout=60)
    assert quick.status_code == 200, quick.text


def test_a_synchronous_client_that_hangs_up_cancels_its_job_on_the_replica(
        deployed: str, job_store: str) -> None:
    import redis

    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{deployed}/stylize", files=upload(), data={"size": "48", "steps": "2000"},
                   timeout=httpx.Timeout(60, read=4))
    with redis.Redis.from_url(job_store) as client:
        (newest,) = client.zrange("atelier:jobs", -1, -1)
    job_id = newest.decode()
    wait_for(lambda: job_document(deployed, job_id)["status"] == "canceled", 30,
             "the abandoned job to be cancelled")
    assert job_document(deployed, job_id)["step"] < 2000


def _replica_actor_names(deployment: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if "SERVE_REPLICA" in a["name"] and f"#{deployment}#" in a["name"]]


def test_a_killed_engine_replica_fails_only_its_own_work_and_keeps_finished_results(
        deployed: str) -> None:
    if not ray.is_initialized():
        ray.init(address="auto", namespace="serve")
    finished = httpx.post(f"{deployed}/stylize", files=upload(), headers=ASYNC,
                          data={"size": "32", "steps": "3"}, timeout=60).json()["id"]
    wait_for(lambda: job_document(deployed, finished)["status"] == "succeeded", 60,
             "the first job")
    before = httpx.get(f"{deployed}/jobs/{finished}/result", timeout=30).content

    running = [httpx.post(f"{deployed}/stylize", files=upload(), headers=ASYNC,
                          data={"size": "48", "steps": "2000"}, timeout=60).json()["id"]
               for _ in range(2)]
    wait_for(lambda: all(job_document(deployed, j)["step"] > 0 for j in running), 60,
             "both jobs to run")
    names = _replica_actor_names("stylize-engine")
    assert len(names) == 2
    victim = ray.get_actor(names[0], namespace="serve")
    ray.kill(victim, no_restart=True)

    # The job on the killed replica fails with a clean, retryable problem; the other runs on.
    def settled() -> bool:
        return any(job_document(deployed, j)["status"] == "failed" for j in running)

    wait_for(settled, 60, "the killed replica's job to fail")
    documents = [job_document(deployed, j) for j in running]
    failed = [d for d in documents if d["status"] == "failed"]
    alive = [d for d in documents if d["status"] != "failed"]
    assert len(failed) == 1 and len(alive) == 1, documents
    assert failed[0]["error"]["type"] == "urn:atelier:problem:worker-crashed"
    assert failed[0]["error"]["status"] == 503 and failed[0]["error"]["retry_after_s"]
    assert alive[0]["status"] == "running"
    httpx.delete(f"{deployed}/jobs/{alive[0]['id']}", timeout=30)
    # Nothing finished was lost, and Serve brings the replica back.
    assert httpx.get(f"{deployed}/jobs/{finished}/result", timeout=30).content == before
    wait_for(lambda: len(_replica_actor_names("stylize-engine")) == 2, 90,
             "Serve to replace the replica")
    again = httpx.post(f"{deployed}/stylize", files=upload(), data={"size": "32", "steps": "3"},
                       timeout=60)
    assert again.status_code == 200, again.text


# Last: it redeploys the application with tight bounds.
def test_engines_past_their_queue_bound_answer_503_with_retry_after(
        cluster: RayCluster, deployed: str, serve_port: int) -> None:
    from app.distributed.serving import deploy

    deploy(ray_settings(cluster, port=serve_port, ray_engine_replicas=1,
                        ray_max_ongoing_requests=1, ray_max_queued_requests=1))

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=deployed, timeout=120) as client:
            return await asyncio.gather(*(client.post("/generate", json={"n": 32, "seed": i})
                                          for i in range(24)))

    answers = asyncio.run(burst())
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    refused = next(r for r in answers if r.status_code == 503)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:atelier:problem:queue-full"
    assert int(refused.headers["retry-after"]) >= 1
