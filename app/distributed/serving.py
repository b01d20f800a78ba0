"""`atelier serve --backend ray`: deploy the Serve application, serve until SIGINT/SIGTERM,
then take it down (engine replicas drain their work within the grace period)."""

from __future__ import annotations

import logging
import signal
import threading

import ray
from ray import serve

from app.distributed.deployments import APP_NAME, application
from app.logs import configure
from app.settings import Settings

log = logging.getLogger("atelier")


class SettingsError(ValueError):
    """Settings that cannot work together on this backend."""


def check(settings: Settings) -> None:
    if settings.ray_ingress_replicas > 1 and not settings.job_store_url:
        raise SettingsError(
            "ATELIER_RAY_INGRESS_REPLICAS > 1 needs ATELIER_JOB_STORE_URL=redis://...: each"
            " ingress replica must see the jobs the others created")


def deploy(settings: Settings) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxies and deploy the application;
    returns once every replica is up."""
    check(settings)
    if not ray.is_initialized():
        ray.init(address=settings.ray_address or None, log_to_driver=False)
    serve.start(http_options={"host": settings.host, "port": settings.port},
                proxy_location=settings.ray_proxy_location)
    serve.run(application(settings), name=APP_NAME, route_prefix="/", blocking=False)


def serve_on_ray(settings: Settings) -> None:
    configure(settings.log_format, settings.log_level)
    deploy(settings)
    log.info("ready", extra={"fields": {"backend": "ray", "host": settings.host,
                                        "port": settings.port}})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping", extra={"fields": {"backend": "ray"}})
    serve.delete(APP_NAME)
    if not settings.ray_address:  # our own local Ray: stop it too
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
