"""Load generator for POST /generate: batching on vs max_batch_images=1 vs a bare endpoint.

Starts each server itself on loopback, drives it with a keep-alive HTTP/1.1 client at
several concurrencies (each level bounded by a request count and a duration), then runs an
open-loop load at half the saturating rate to read p99 latency there. Prints one table and
the ratios, all from this one run.

Servers (`--servers`, any of them, in this order):
  service  `atelier serve` with the real generator (batching, then max_batch_images=1)
  null     the same service with a generator that costs nothing (bench/null_server.py):
           what the HTTP stack, pool and encoder cost per request (batching, then
           max_batch_images=1)
  bare     the same framework answering a pre-encoded PNG (bench/bare_server.py)

    python bench/generate.py                      # defaults: concurrency 1,16,64
    python bench/generate.py --concurrency 64 --requests 3000 --duration 15 --n 1
    python bench/generate.py --servers null,bare --concurrency 1,64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            try:
                status, _ = await fetch_once(self.port, "GET", "/readyz", b"")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Connection:
    """One keep-alive HTTP/1.1 connection; minimal, so the client costs little CPU."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def fetch_once(port: int, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    conn = await Connection.open(port)
    try:
        return await conn.request(method, path, body)
    finally:
        conn.close()


@dataclass
class Result:
    server: str
    mode: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    images_per_request: int = 1
    server_cpu_s: float | None = None  # CPU time of the server process during the level

    @property
    def cpu_us_per_request(self) -> float:
        if self.server_cpu_s is None or not self.requests:
            return float("nan")
        return self.server_cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (f"| {self.server} | {self.mode} | {self.concurrency} | {self.requests} | "
                f"{self.errors} | {self.rps:.0f} | {self.rps * self.images_per_request:.0f} | "
                f"{self.pct(0.5):.1f} | {self.pct(0.95):.1f} | {self.pct(0.99):.1f} | "
                f"{self.cpu_us_per_request:.0f} |")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, all its threads (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def closed_loop(port: int, body: bytes, concurrency: int, max_requests: int,
                      max_seconds: float, result: Result) -> None:
    conns = [await Connection.open(port) for _ in range(concurrency)]
    issued = 0
    stop_at = time.perf_counter() + max_seconds

    async def user(conn: Connection) -> None:
        nonlocal issued
        while issued < max_requests and time.perf_counter() < stop_at:
            issued += 1
            t0 = time.perf_counter()
            status, _ = await conn.request("POST", "/generate", body)
            result.latencies.append(time.perf_counter() - t0)
            result.requests += 1
            result.errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(user(c) for c in conns))
    result.seconds = time.perf_counter() - started
    for conn in conns:
        conn.close()


async def open_loop(port: int, body: bytes, rate: float, max_requests: int,
                    max_seconds: float, result: Result, connections: int = 64) -> None:
    """Requests arrive on a fixed schedule regardless of answers (no coordinated omission)."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await Connection.open(port))
    count = min(max_requests, int(rate * max_seconds))
    started = time.perf_counter()

    async def one(scheduled: float) -> None:
        conn = await idle.get()
        status, _ = await conn.request("POST", "/generate", body)
        result.latencies.append(time.perf_counter() - scheduled)  # from when it was due
        result.requests += 1
        result.errors += status != 200
        idle.put_nowait(conn)

    tasks = []
    for i in range(count):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    result.seconds = time.perf_counter() - started
    while not idle.empty():
        idle.get_nowait().close()


SERVERS = ("service", "null", "bare")


async def bench(args: argparse.Namespace) -> list[Result]:
    body = json.dumps({"n": args.n}).encode()
    levels = [int(c) for c in args.concurrency.split(",")]
    python = sys.executable
    base_env = {"ATELIER_LOG_LEVEL": args.log_level}
    if args.batch_wait_ms is not None:
        base_env["ATELIER_BATCH_WAIT_MS"] = str(args.batch_wait_ms)
    if args.devices:
        base_env["ATELIER_DEVICES"] = args.devices
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    commands = {
        "service": [python, "-m", "app.cli", "serve"],
        "null": [python, str(ROOT / "bench" / "null_server.py")],
    }
    servers: list[tuple[str, str, list[str], dict[str, str]]] = []
    for name in SERVERS:
        if name not in wanted:
            continue
        if name == "bare":
            servers.append(("bare", "pre-encoded PNG",
                            [python, str(ROOT / "bench" / "bare_server.py")], {}))
            continue
        env = {**base_env, "ATELIER_NULL_IMAGE": args.null_image}
        servers.append((name, "batching", commands[name],
                        {**env, "ATELIER_MAX_BATCH_IMAGES": str(args.max_batch_images)}))
        servers.append((name, "max_batch_images=1", commands[name],
                        {**env, "ATELIER_MAX_BATCH_IMAGES": "1"}))
    results: list[Result] = []
    for name, mode, command, env in servers:
        port = free_port()
        if name != "bare":
            env = {**env, "ATELIER_PORT": str(port)}
        else:
            command = [*command, str(port)]
        server = Server(name, command, port, env)
        try:
            await server.wait_ready()
            warm = Result(name, mode, 8)
            await closed_loop(port, body, 8, args.warmup, 30, warm)
            for level in levels:
                result = Result(name, mode, level, images_per_request=args.n)
                cpu_before = cpu_seconds(server.proc.pid)
                await closed_loop(port, body, level, args.requests, args.duration, result)
                cpu_after = cpu_seconds(server.proc.pid)
                if cpu_before is not None and cpu_after is not None:
                    result.server_cpu_s = cpu_after - cpu_before
                results.append(result)
                print(result.row(), flush=True)
            if name == "service" and mode == "batching" and args.open_loop:
                saturating = max(r.rps for r in results
                                 if r.server == name and r.mode == mode)
                half = Result(name, f"open loop {saturating / 2:.0f} req/s", 0,
                              images_per_request=args.n)
                await open_loop(port, body, saturating / 2, args.requests * 2, args.duration,
                                half)
                results.append(half)
                print(half.row(), flush=True)
        finally:
            server.stop()
    return results


def summary(results: list[Result], levels: list[int]) -> list[str]:
    """The ratios, each between rows of this run."""

    def at(server: str, mode: str | None, level: int) -> Result | None:
        return next((r for r in results if r.server == server and r.concurrency == level
                     and (mode is None or r.mode == mode)), None)

    lines: list[str] = []
    top = max(levels)
    for server in ("service", "null"):
        batched = at(server, "batching", top)
        single = at(server, "max_batch_images=1", top)
        if batched and single and single.rps:
            lines.append(f"{server}: batching / max_batch_images=1 at concurrency {top}: "
                         f"{batched.rps / single.rps:.2f}x requests/s")
    for level in levels:
        bare = at("bare", None, level)
        if not bare or not bare.rps:
            continue
        for server in ("service", "null"):
            for mode in ("batching", "max_batch_images=1"):
                row = at(server, mode, level)
                if row:
                    lines.append(f"{server} ({mode}) / bare endpoint at concurrency {level}: "
                                 f"{row.rps / bare.rps:.0%} of its requests/s")
    if 1 in levels:
        p50 = [f"{r.server} ({r.mode}) {r.pct(0.5):.2f} ms"
               for r in results if r.concurrency == 1]
        lines.append("p50 at concurrency 1: " + ", ".join(p50))
    for level in levels:
        cpu = [f"{r.server} ({r.mode}) {r.cpu_us_per_request:.0f}"
               for r in results if r.concurrency == level and r.server_cpu_s is not None]
        if cpu:
            lines.append(f"server CPU µs per request at concurrency {level}: " + ", ".join(cpu))
    half = next((r for r in results if r.mode.startswith("open loop")), None)
    if half:
        lines.append(f"p99 at half the saturating load ({half.mode}): "
                     f"{half.pct(0.99):.1f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--requests", type=int, default=2000, help="cap per level")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds cap per level")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--n", type=int, default=1, help="images per request")
    parser.add_argument("--max-batch-images", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=None,
                        help="ATELIER_BATCH_WAIT_MS of the service (default: its own default)")
    parser.add_argument("--devices", default="", help="ATELIER_DEVICES for the service")
    parser.add_argument("--servers", default=",".join(SERVERS),
                        help="which of service,null,bare to run (default: all three)")
    parser.add_argument("--null-image", choices=("zeros", "noise"), default="zeros",
                        help="what the null generator returns (noise: a PNG encode as costly"
                        " as a real image's)")
    parser.add_argument("--log-level", default="WARNING",
                        help="ATELIER_LOG_LEVEL of the service (INFO: one access line each)")
    parser.add_argument("--no-open-loop", dest="open_loop", action="store_false",
                        help="skip the open-loop run at half the saturating load")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    print("| server | mode | concurrency | requests | errors | req/s | images/s "
          "| p50 ms | p95 ms | p99 ms | server CPU µs/req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = asyncio.run(bench(args))
    print()
    for line in summary(results, [int(c) for c in args.concurrency.split(",")]):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([
            {"server": r.server, "mode": r.mode, "concurrency": r.concurrency,
             "requests": r.requests, "errors": r.errors, "rps": r.rps,
             "p50_ms": r.pct(0.5), "p95_ms": r.pct(0.95), "p99_ms": r.pct(0.99),
             "server_cpu_us_per_request": r.cpu_us_per_request}
            for r in results
        ], indent=2))


if __name__ == "__main__":
    main()
