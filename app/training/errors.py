"""Why a training run refuses to start or stops: each error says what to do about it.

They are `AtelierError`s like every error of the project: `status` 4xx is the caller's input
(exit code 2), 5xx is a failure of the run (exit code 1).
"""

from __future__ import annotations

from app.errors import AtelierError


class TrainingError(AtelierError):
    status = 500
    slug = "training-failed"
    title = "Training failed"

    @property
    def exit_code(self) -> int:
        return 2 if 400 <= self.status < 500 else 1


class DatasetError(TrainingError):
    """The image folder cannot be trained on: missing, empty, unreadable files, too few."""

    status = 422
    slug = "training-data"
    title = "Unusable training data"


class TrainingUsageError(TrainingError):
    """Options that contradict each other or the run on disk."""

    status = 422
    slug = "training-usage"
    title = "Invalid training options"


class RunConflict(TrainingError):
    """A run of that name exists (and neither --resume nor --restart was given), or the
    checkpoint to resume belongs to other data or other settings."""

    status = 409
    slug = "training-run-conflict"
    title = "Training run conflict"


class NoRoom(TrainingError):
    """Not enough free disk for checkpoints, samples and the exported model."""

    status = 507
    slug = "insufficient-storage"
    title = "Not enough disk space"
