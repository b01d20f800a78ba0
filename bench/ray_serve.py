"""POST /generate on the ray backend against the bare endpoint and the local backend, all in
one run on this machine: req/s with 1, 2 and 4 ingress replicas, and the latency the Ray
path adds at low load (concurrency 1).

Starts everything itself: the bare endpoint (bench/bare_server.py) and `atelier serve`
(local backend) as processes; a Ray head node (`ray start --head`) and a redis-server
(the ingress replicas share jobs through it) for the ray rows. One engine replica of each
kind; Serve's HTTP proxy on the head node.

    python bench/ray_serve.py                                  # 1,2,4 replicas; c 1,64
    python bench/ray_serve.py --replicas 1,2 --concurrency 1,16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import ROOT, Result, Server, closed_loop, fetch_once, free_port

RAY = str(Path(sys.executable).with_name("ray"))


async def measure(name: str, mode: str, port: int, levels: list[int],
                  args: argparse.Namespace) -> list[Result]:
    body = json.dumps({"n": 1}).encode()
    await closed_loop(port, body, 8, args.warmup, 60, Result(name, mode, 8))
    results = []
    for level in levels:
        result = Result(name, mode, level)
        await closed_loop(port, body, level, args.requests, args.duration, result)
        print(result.row(), flush=True)
        results.append(result)
    return results


async def wait_ready(port: int, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await fetch_once(port, "GET", "/readyz", b""))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the server did not become ready")


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return redis, f"redis://127.0.0.1:{port}/0"


async def ray_rows(levels: list[int], args: argparse.Namespace) -> list[Result]:
    import ray
    from ray import serve

    from app.distributed.deployments import APP_NAME
    from app.distributed.serving import deploy
    from app.settings import Settings

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update({"RAY_AUTH_MODE": "disabled"})
    head_port = free_port()
    subprocess.run([RAY, "start", "--head", "--port", str(head_port), "--num-cpus", "8",
                    "--include-dashboard=false", "--disable-usage-stats"],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = Path(tempfile.mkdtemp(prefix="atelier-ray-bench-"))
    redis, redis_url = start_redis(folder)
    results: list[Result] = []
    try:
        port = free_port()  # Serve's proxy keeps the port it started with
        for replicas in args.replicas:
            settings = Settings(
                backend="ray", ray_address=f"127.0.0.1:{head_port}", port=port,
                ray_proxy_location="HeadOnly", ray_ingress_replicas=replicas,
                job_store_url=redis_url, log_level="WARNING", jobs_dir=folder / "jobs")
            deploy(settings)
            await wait_ready(port)
            results += await measure("ray", f"{replicas} ingress", port, levels, args)
            if replicas == args.replicas[0]:
                results.append(await engine_hop(settings, args))
            serve.delete(APP_NAME)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return results


async def engine_hop(settings: Any, args: argparse.Namespace) -> Result:
    """The engine deployment alone, called through a Serve handle from this process one
    request at a time: the part of the Ray path's latency that is not HTTP or the app."""
    from ray import serve

    from app.distributed.deployments import APP_NAME
    from app.engines import gan

    handle = serve.get_deployment_handle("generate-engine", app_name=APP_NAME)
    latents = gan.latents_for_seeds(1, 1, 100, None)
    result = Result("ray", "engine handle only", 1)
    for _ in range(20):
        await handle.generate.remote(settings.default_model, latents, "")
    started = time.perf_counter()
    while result.requests < args.requests and time.perf_counter() - started < args.duration:
        t0 = time.perf_counter()
        status, _, _ = await handle.generate.remote(settings.default_model, latents, "")
        result.latencies.append(time.perf_counter() - t0)
        result.requests += 1
        result.errors += status != "ok"
    result.seconds = time.perf_counter() - started
    print(result.row(), flush=True)
    return result


async def bench(args: argparse.Namespace) -> list[Result]:
    levels = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable
    results: list[Result] = []
    local: list[tuple[str, str, list[str], dict[str, str]]] = [
        ("bare", "pre-encoded PNG", [python, str(ROOT / "bench" / "bare_server.py")], {}),
        ("local", "atelier serve", [python, "-m", "app.cli", "serve"],
         {"ATELIER_LOG_LEVEL": "WARNING"}),
    ]
    for name, mode, command, env in local:
        port = free_port()
        if name == "bare":
            command = [*command, str(port)]
        server = Server(name, command, port, {**env, "ATELIER_PORT": str(port)})
        try:
            await server.wait_ready()
            results += await measure(name, mode, port, levels, args)
        finally:
            server.stop()
    results += await ray_rows(levels, args)
    return results


def summary(results: list[Result], levels: list[int]) -> list[str]:
    def at(server: str, level: int, mode: str | None = None) -> Result | None:
        return next((r for r in results if r.server == server and r.concurrency == level
                     and (mode is None or r.mode == mode)), None)

    lines = []
    for level in levels:
        bare, local = at("bare", level), at("local", level)
        for row in (r for r in results if r.server == "ray" and r.concurrency == level):
            parts = []
            if bare and bare.rps:
                parts.append(f"{row.rps / bare.rps:.0%} of the bare endpoint's req/s")
            if local and local.rps:
                parts.append(f"{row.rps / local.rps:.0%} of the local backend's")
            lines.append(f"ray, {row.mode}, concurrency {level}: " + ", ".join(parts))
    low = at("local", 1)
    if low:
        for row in (r for r in results if r.server == "ray" and r.concurrency == 1):
            lines.append(f"added latency of the Ray path at concurrency 1 ({row.mode}): "
                         f"p50 +{row.pct(0.5) - low.pct(0.5):.2f} ms "
                         f"({low.pct(0.5):.2f} -> {row.pct(0.5):.2f}), "
                         f"p99 +{row.pct(0.99) - low.pct(0.99):.2f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,4",
                        type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=20000, help="cap per level")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds cap per level")
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    machine: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count(),
                               "python": platform.python_version()}
    print(f"# bench/ray_serve.py on {machine}", flush=True)
    print("| server | mode | concurrency | requests | errors | req/s | images/s | p50 ms | "
          "p95 ms | p99 ms | server CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = asyncio.run(bench(args))
    for line in summary(results, [int(c) for c in args.concurrency.split(",")]):
        print("-", line)


if __name__ == "__main__":
    main()
