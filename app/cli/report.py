"""What the user sees of a run: a progress bar driven by a job's events (the same events
locally and from a server), and the final line, or one JSON object with `--json`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from app.cli.errors import FAILED, CliError


@dataclass
class Generated:
    """What a generate run gives, locally or from a server."""

    data: bytes
    model: str
    seeds: list[int]


class JobProgress:
    """Consumes a style job's events (type, JSON data); the bar goes to stderr.

    `__call__` returns the job document of the final `succeeded` event, None for other
    events, and raises CliError when the job failed or was cancelled.
    """

    def __init__(self, *, enabled: bool, steps: int | None = None) -> None:
        self.bar = tqdm(total=steps, unit="step", disable=not enabled, dynamic_ncols=True,
                        file=sys.stderr)

    def __call__(self, kind: str, data: dict[str, Any]) -> dict[str, Any] | None:
        if kind in ("progress", "succeeded"):
            self.bar.total = data["steps"]
            self.bar.n = data["step"]
            losses = data.get("losses")
            if losses:
                self.bar.set_postfix(content=f"{losses['content']:.3g}",
                                     style=f"{losses['style']:.3g}", refresh=False)
            self.bar.refresh()
        if kind == "interrupted":  # the server stopped; it runs the job again when back
            self.bar.n = 0
            tqdm.write("the server stopped; the job runs again when it is back",
                       file=sys.stderr)
        if kind == "succeeded":
            return data
        if kind == "failed":
            error = data.get("error") or {}
            title, detail = error.get("title", "Failed"), error.get("detail", "unknown error")
            raise CliError(f"the job failed: {title}: {detail}", FAILED)
        if kind == "canceled":
            raise CliError(f"job {data.get('id')} was cancelled", FAILED)
        return None

    def close(self) -> None:
        self.bar.close()


def finish(result: dict[str, Any], *, as_json: bool, line: str) -> None:
    """One JSON object (for scripts) or one human line on stdout."""
    print(json.dumps(result) if as_json else line, flush=True)
