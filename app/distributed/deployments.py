"""The Serve application: an ingress deployment running the FastAPI app and one engine
deployment per lane, each with replicas, resources and backpressure from `Settings`.

`application(settings)` builds it for `atelier serve --backend ray`; `build_app(args)` is
the builder `serve deploy deploy/serve.yaml` imports (its args are ATELIER_* settings in
lower case, on top of the environment).
"""

from __future__ import annotations

from typing import Any

import ray
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.catalog import Catalog
from app.distributed.engine import EngineReplica
from app.distributed.remote import RemotePool
from app.pool import PoolMetrics
from app.process import tune_garbage_collector
from app.runtime import GENERATE_LANE, STYLIZE_LANE
from app.settings import Settings

APP_NAME = "atelier"
# CPUs each replica reserves for Ray's scheduling (Ray does not cap what it uses): half a
# core, so that an ingress and both engines fit a 2-core machine.
REPLICA_CPUS = 0.5


@serve.ingress()
class Ingress:
    """One replica of the HTTP app; its pool forwards work to the engine deployments."""

    def __init__(self, settings: dict[str, Any], engines: dict[str, DeploymentHandle[Any]]) -> None:
        self.settings = Settings(**settings)
        self.engines = engines

    def __serve_build_asgi_app__(self) -> Any:
        from app.main import create_app

        def remote_pool(settings: Settings, catalog: Catalog, metrics: PoolMetrics) -> RemotePool:
            return RemotePool(self.engines, queue_capacity=settings.ray_max_queued_requests,
                              retry_after_s=settings.retry_after_s, metrics=metrics)

        app = create_app(self.settings, pool_factory=remote_pool)
        app.add_middleware(ServedBy, name=_replica_name())
        tune_garbage_collector()  # as app.serving does for a local server
        return app


def _replica_name() -> str:
    replica = serve.get_replica_context().replica_id.unique_id
    return f"ingress {replica} on node {ray.get_runtime_context().get_node_id()[:12]}"


class ServedBy:
    """`X-Served-By` on every response: which ingress replica (and node) answered and, for
    work an engine ran, which engine replica's device: for operators following a request
    through the cluster. The engine's place is the `device` the route logs."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app, self.name = app, name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                served_by = self.name
                engine = scope.get("state", {}).get("log_fields", {}).get("device")
                if engine:
                    served_by += f"; engine {engine}"
                message["headers"] = [*message.get("headers", []),
                                      (b"x-served-by", served_by.encode())]
            await send(message)

        await self.app(scope, receive, send_with_header)


def engine_gpus(settings: Settings) -> float:
    if settings.ray_engine_gpus >= 0:
        return settings.ray_engine_gpus
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0  # type: ignore[no-untyped-call]
    return 1.0 if gpus > 0 else 0.0


def _engine_options(settings: Settings, lane: str) -> dict[str, Any]:
    replicas: dict[str, Any] = {"num_replicas": settings.ray_engine_replicas}
    if settings.ray_engine_max_replicas > settings.ray_engine_replicas:
        replicas = {"autoscaling_config": {
            "min_replicas": settings.ray_engine_replicas,
            "initial_replicas": settings.ray_engine_replicas,
            "max_replicas": settings.ray_engine_max_replicas,
            # A replica's pool batches what it holds; more than a batch waiting is the
            # signal for another replica.
            "target_ongoing_requests": max(2, settings.max_batch_images // 2),
        }}
    options: dict[str, Any] = {
        "name": f"{lane}-engine",
        "ray_actor_options": {"num_cpus": REPLICA_CPUS, "num_gpus": engine_gpus(settings),
                              "resources": dict(settings.ray_engine_resources)},
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "max_queued_requests": settings.ray_max_queued_requests,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
        "health_check_period_s": 5,
        **replicas,
    }
    if settings.ray_max_replicas_per_node:
        options["max_replicas_per_node"] = settings.ray_max_replicas_per_node
    return options


def application(settings: Settings) -> serve.Application:
    values = settings.model_dump(mode="json")
    engines = {
        lane: serve.deployment(**_engine_options(settings, lane))(EngineReplica).bind(
            values, [lane])
        for lane in (GENERATE_LANE, STYLIZE_LANE)
    }
    options: dict[str, Any] = {
        "name": "ingress", "num_replicas": settings.ray_ingress_replicas,
        "ray_actor_options": {"num_cpus": REPLICA_CPUS},
        # The app bounds its own work (queues, job limits): Serve only spreads requests.
        "max_ongoing_requests": 1024,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s + 5,
    }
    if settings.ray_max_replicas_per_node:
        options["max_replicas_per_node"] = settings.ray_max_replicas_per_node
    ingress = serve.deployment(**options)(Ingress)
    app: serve.Application = ingress.bind(values, engines)
    return app


def build_app(args: dict[str, Any]) -> serve.Application:
    """The builder `serve deploy` and `serve run app.distributed.deployments:build_app` call."""
    return application(Settings(**args))
