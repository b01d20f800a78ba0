"""Exit codes and the one error type the commands raise; how any error becomes a message."""

from __future__ import annotations

from typing import Any

OK, FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130


class CliError(Exception):
    """A message for the user (printed as `error: <message>`) and the exit code."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def exit_code(status: int) -> int:
    """An error's HTTP-style status as an exit code: the caller's input (4xx) is bad usage,
    anything else (5xx: busy, model not pulled, a failure) is a failure."""
    return USAGE if 400 <= status < 500 else FAILED


def from_validation(exc: Any, options: dict[str, str] | None = None) -> CliError:
    """A pydantic ValidationError of parameters as a usage error naming the options."""
    messages = []
    for error in exc.errors():
        loc = error.get("loc") or ("?",)
        name = str(loc[0])
        option = (options or {}).get(name) or "--" + name.replace("_", "-")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        value = error.get("input")
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            message += f" (got {value!r})"
        messages.append(f"{option}: {message}")
    return CliError("; ".join(messages), USAGE)
