"""A training run on disk and its loop: checkpoints, sample grids, evaluations, progress,
the disk-room check and a clean stop on Ctrl-C.

A run directory holds `checkpoint.pt` (everything `Trainer.state_dict` has, written to a
temporary file and renamed, so a crash never leaves half a checkpoint), `samples/` (the
fixed-noise grid of the EMA generator, `step-0001000.png`, ... and `latest.png`) and
`log.jsonl` (losses, images/s and evaluations, one JSON object a line).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TextIO

import torch
from tqdm import tqdm

from app.engines import imaging
from app.training.errors import NoRoom, TrainingError
from app.training.metrics import Evaluator, Score
from app.training.nets import parameter_bytes
from app.training.trainer import TrainConfig, Trainer, _seed

Outcome = Literal["finished", "time", "target", "interrupted"]
MiB = 1 << 20


class CheckpointError(TrainingError):
    status = 500
    slug = "checkpoint-failed"
    title = "Checkpoint failed"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.pt"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    def clear(self) -> None:
        """Forget an earlier run in this directory (--restart)."""
        self.checkpoint.unlink(missing_ok=True)
        self.log.unlink(missing_ok=True)
        if self.samples.is_dir():
            for grid in self.samples.glob("*.png"):
                grid.unlink()


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically: a temporary file next to it, fsynced, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        room = " (the disk is full)" if exc.errno == errno.ENOSPC else ""
        raise CheckpointError(f"could not write the checkpoint {path}{room}: "
                              f"{exc.strerror or exc}") from exc


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location=device, weights_only=True)
    return state


# ---- room on disk ----------------------------------------------------------------------------


def checkpoint_bytes(config: TrainConfig) -> int:
    """About the size of one checkpoint: G, D (weights and Adam's two moments) and the EMA."""
    g, d = parameter_bytes(config.size, config.nz, config.ngf, config.ndf)
    return 3 * (g + d) + g + MiB


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_room(config: TrainConfig, run_dir: Path, model_dir: Path, grids: int) -> None:
    """Refuse to start when the disk cannot hold a checkpoint being replaced (two at once),
    the sample grids and the exported model, with a margin."""
    g, _ = parameter_bytes(config.size, config.nz, config.ngf, config.ndf)
    side = 8 * config.size + 18
    needs = {run_dir: 2 * checkpoint_bytes(config) + grids * side * side * 3 + 16 * MiB,
             model_dir: g + MiB}
    by_disk: dict[int, tuple[Path, int]] = {}
    for path, amount in needs.items():
        where = _existing(path)
        device = where.stat().st_dev
        before = by_disk.get(device, (where, 0))[1]
        by_disk[device] = (where, before + amount)
    for where, amount in by_disk.values():
        free = shutil.disk_usage(where).free
        if free < amount:
            raise NoRoom(
                f"not enough disk space in {where} for the run's checkpoints and model: it"
                f" needs about {amount / MiB:.0f} MiB, {free / MiB:.0f} MiB are free; free some"
                " space or point --run-dir elsewhere")


# ---- the loop --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    total_steps: int | None  # None: until `minutes`
    minutes: float | None = None
    sample_every: int = 1000
    eval_every: int = 5000
    checkpoint_every: int = 0  # steps; 0: by time only
    checkpoint_minutes: float = 10.0
    log_every: int = 50  # steps between progress reports (device syncs), or
    log_seconds: float = 2.0  # seconds, whichever comes first
    target_kid: float | None = None


@contextlib.contextmanager
def stop_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGINT/SIGTERM call `on_signal` (the loop then stops at the end of its step) instead
    of raising in the middle of one; a second signal raises KeyboardInterrupt at once.
    Only the main thread can take signals: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal seen
        if seen:
            raise KeyboardInterrupt
        seen = True
        on_signal()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Session:
    """Runs a trainer to its schedule's end, writing what the run directory holds."""

    def __init__(self, trainer: Trainer, run_dir: RunDir, schedule: Schedule, *,
                 evaluator: Callable[[], Evaluator | None] | None = None,
                 progress: bool = True, stream: TextIO | None = None,
                 extra_state: dict[str, Any] | None = None) -> None:
        """`evaluator`: makes the evaluator at the first evaluation (None: no metrics);
        `extra_state`: saved in the checkpoint along with the trainer's state."""
        self.trainer, self.run_dir, self.schedule = trainer, run_dir, schedule
        self.extra_state = dict(extra_state or {})
        self._make_evaluator = evaluator
        self._evaluator: Evaluator | None = None
        self._evaluator_tried = False
        self.progress, self.stream = progress, stream or sys.stderr
        self.interrupted = False
        self.last_score: Score | None = None
        self._train_time = 0.0  # seconds of training steps in this session
        self._session_steps = 0
        self._base_seconds = trainer.seconds
        self._started = time.monotonic()

    def interrupt(self) -> None:
        """Stop at the end of the current step (a signal handler: it only sets a flag)."""
        self.interrupted = True

    def note(self, message: str) -> None:
        tqdm.write(message, file=self.stream)

    # ---- what the loop writes ---------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        self.run_dir.root.mkdir(parents=True, exist_ok=True)
        with self.run_dir.log.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def checkpoint(self) -> None:
        self.trainer.seconds = self._base_seconds + (time.monotonic() - self._started)
        save_checkpoint({**self.trainer.state_dict(), **self.extra_state},
                        self.run_dir.checkpoint)

    def save_samples(self, net: torch.nn.Module | None = None) -> Path:
        if net is None:
            net = self.trainer.served_generator()
        grid = imaging.grid(self.trainer.sample_grid(net), columns=8)
        data = imaging.encode(grid, imaging.ImageFormat.PNG)
        self.run_dir.samples.mkdir(parents=True, exist_ok=True)
        path = self.run_dir.samples / f"step-{self.trainer.step:07d}.png"
        path.write_bytes(data)
        latest = self.run_dir.samples / "latest.png"
        partial = latest.with_name(".latest.png.partial")
        partial.write_bytes(data)
        partial.replace(latest)  # a viewer reloading it never sees half a file
        return path

    def evaluator(self) -> Evaluator | None:
        if not self._evaluator_tried:
            self._evaluator_tried = True
            if self._make_evaluator is not None:
                self._evaluator = self._make_evaluator()
        return self._evaluator

    def evaluate(self, net: torch.nn.Module | None = None) -> Score | None:
        evaluator = self.evaluator()
        if evaluator is None:
            return None
        trainer = self.trainer
        if net is None:
            net = trainer.served_generator()
        # The same latents at every evaluation: scores move with the network only.
        fake = trainer.generate(net, len(evaluator), seed=_seed(trainer.config.seed, 6))
        score = evaluator(fake)
        record = {"step": trainer.step, **score.as_dict()}
        trainer.evals = [e for e in trainer.evals if e["step"] != trainer.step] + [record]
        self._log({"eval": record})
        self.last_score = score
        spread = f" ± {score.kid_std:.2g}" if score.kid_std else ""
        self.note(f"step {trainer.step}: KID {score.kid:.4g}{spread}, FID {score.fid:.4g}"
                  f" ({score.images} images per set)")
        return score

    # ---- the loop ---------------------------------------------------------------------

    def run(self) -> Outcome:
        """Train until the schedule's end, the time limit, the target KID or a stop signal;
        then (unless stopped) a last sample grid and evaluation; a checkpoint either way."""
        with stop_signals(self.interrupt):
            outcome = self._loop()
            if outcome != "interrupted":
                net = self.trainer.served_generator()
                self.save_samples(net)
                last = self.trainer.evals[-1] if self.trainer.evals else None
                if last is None or last["step"] != self.trainer.step:
                    self.evaluate(net)
                elif self.last_score is None:  # scored at this step by an earlier session
                    self.last_score = Score(**{k: last[k] for k in
                                               ("kid", "kid_std", "fid", "images")})
            self.checkpoint()
        return outcome

    def _loop(self) -> Outcome:
        trainer, schedule = self.trainer, self.schedule
        total = schedule.total_steps
        deadline = None if schedule.minutes is None else self._started + 60 * schedule.minutes
        last_checkpoint = time.monotonic()
        bar = tqdm(total=total, initial=trainer.step, unit="step", dynamic_ncols=True,
                   disable=not self.progress, file=self.stream, smoothing=0.1)
        window_start, window_steps = time.perf_counter(), 0
        outcome: Outcome = "finished"
        try:
            while total is None or trainer.step < total:
                if self.interrupted:
                    self.note("stopping: writing a checkpoint (Ctrl-C again abandons it)")
                    outcome = "interrupted"
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    outcome = "time"
                    break
                trainer.train_step()
                window_steps += 1
                self._session_steps += 1
                step = trainer.step
                log_now = (step % schedule.log_every == 0 or step == total
                           or time.perf_counter() - window_start >= schedule.log_seconds)
                sample_now = bool(schedule.sample_every) and step % schedule.sample_every == 0
                eval_now = bool(schedule.eval_every) and step % schedule.eval_every == 0
                checkpoint_now = (
                    (bool(schedule.checkpoint_every) and step % schedule.checkpoint_every == 0)
                    or time.monotonic() - last_checkpoint >= 60 * schedule.checkpoint_minutes)
                if not (log_now or sample_now or eval_now or checkpoint_now):
                    continue
                rows = trainer.flush()  # waits for the device: once per log interval
                now = time.perf_counter()
                self._train_time += now - window_start  # images/s: training steps only
                rate = window_steps * trainer.config.batch_size / max(now - window_start, 1e-9)
                window_steps = 0
                if log_now and rows:
                    self._report(bar, rows[-1], rate)
                if sample_now:
                    self.save_samples()
                if eval_now:
                    score = self.evaluate()
                    if (score is not None and schedule.target_kid is not None
                            and score.kid <= schedule.target_kid):
                        outcome = "target"
                        break
                if checkpoint_now:
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
                window_start = time.perf_counter()
        finally:
            trainer.flush()
            if window_steps:
                self._train_time += time.perf_counter() - window_start
            bar.update(trainer.step - bar.n)
            bar.close()
        return outcome

    def _report(self, bar: tqdm[Any], row: tuple[int, float, float], rate: float) -> None:
        step, d_loss, g_loss = row
        if not (math.isfinite(d_loss) and math.isfinite(g_loss)):
            raise TrainingError(
                f"the losses diverged at step {step} (D {d_loss}, G {g_loss}); resume from"
                " the last checkpoint with a lower --lr, or --restart")
        self._log({"step": step, "d_loss": d_loss, "g_loss": g_loss,
                   "images_per_s": round(rate, 1)})
        bar.update(step - bar.n)
        bar.set_postfix(D=f"{d_loss:.3f}", G=f"{g_loss:.3f}", img_s=f"{rate:,.0f}",
                        refresh=False)

    @property
    def images_per_s(self) -> float:
        """Training throughput of this session (steps only: no evaluations, grids or
        checkpoints)."""
        if not self._train_time:
            return 0.0
        return self._session_steps * self.trainer.config.batch_size / self._train_time

    def summary(self) -> dict[str, Any]:
        trainer = self.trainer
        return {
            "steps": trainer.step, "epochs": round(trainer.step / trainer.steps_per_epoch, 2),
            "images_seen": trainer.images_seen,
            "seconds": round(self._base_seconds + time.monotonic() - self._started, 1),
            "images_per_s": round(self.images_per_s, 1),
            "elapsed": _duration(time.monotonic() - self._started),
        }
