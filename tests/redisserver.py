"""A real redis-server (the Debian package) for the tests: its own port and folder, AOF on."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


def available() -> bool:
    return Path(BINARY).is_file()


def require() -> None:
    """Skip without redis-server, unless ATELIER_REQUIRE_REDIS=1 (CI) makes that a failure."""
    if available():
        return
    if os.environ.get("ATELIER_REQUIRE_REDIS") == "1":
        pytest.fail(f"{BINARY} is missing; install Debian's redis-server package")
    pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")


class RedisServer:
    """`appendfsync always`: every write is on disk before Redis acknowledges it, so a
    `kill -9` (or a power cut) loses nothing acknowledged. (`everysec`, Redis's default,
    survives a killed process too, since the AOF is written before the reply; only an OS
    crash or power cut may lose the last second.)"""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [BINARY, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert self.process.poll() is None, (self.folder / "redis.log").read_text()
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
