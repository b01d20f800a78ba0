"""A real two-node Ray cluster on this machine, as an operator would start one: a head
(`ray start --head`) and a second node (`ray start --address`), each with a custom resource
naming it, so that tests can see where replicas land."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
HEAD, SECOND = "head_node", "second_node"  # each node's custom resource


class RayCluster:
    def __init__(self, port: int, cpus: int = 4) -> None:
        self.address = f"127.0.0.1:{port}"
        self.cpus = cpus
        # Loopback only: no token authentication between the test nodes.
        self.env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def _ray(self, *args: str, timeout: float = 120) -> None:
        done = subprocess.run([RAY, *args], env=self.env, timeout=timeout, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{done.stdout[-3000:]}")

    def start(self) -> RayCluster:
        port = self.address.rsplit(":", 1)[1]
        common = ("--num-cpus", str(self.cpus), "--disable-usage-stats")
        self._ray("start", "--head", "--port", port, "--include-dashboard=false", *common,
                  "--resources", f'{{"{HEAD}": 100}}')
        self._ray("start", "--address", self.address, *common,
                  "--resources", f'{{"{SECOND}": 100}}')
        return self

    def stop(self) -> None:
        subprocess.run([RAY, "stop", "--force"], env=self.env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
