"""`atelier generate` and `atelier stylize`: check the inputs and the output, build the
job's parameters, run locally (app.cli.local) or on a server (app.cli.remote), write the
image and report."""

from __future__ import annotations

import argparse
import time

from app.cli import local, remote
from app.cli.errors import OK
from app.cli.files import output_format, read_input, write_output
from app.cli.parser import generate_request, style_params
from app.cli.report import JobProgress, finish
from app.settings import Settings


def generate(settings: Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    fmt = output_format(args.output)
    request = generate_request(args, fmt)
    if args.server:
        generated = remote.generate(args.server, request)
    else:
        generated = local.generate(settings, request, fmt)
    write_output(args.output, generated.data)
    n = len(generated.seeds)
    finish(
        {"output": str(args.output), "model": generated.model, "seed": generated.seeds[0],
         "seeds": generated.seeds, "seconds": round(time.monotonic() - started, 3)},
        as_json=args.json,
        line=f"wrote {args.output} (seed {generated.seeds[0]}, {n} image{'s' * (n > 1)})",
    )
    return OK


def stylize(settings: Settings, args: argparse.Namespace) -> int:
    started = time.monotonic()
    fmt = output_format(args.output)
    params = style_params(args, fmt)
    content = read_input(args.content)
    styles = [read_input(path) for path in args.styles]

    def progress(steps: int) -> JobProgress:
        return JobProgress(enabled=not (args.quiet or args.json), steps=steps)

    if args.server:
        document, data = remote.stylize(
            args.server, (args.content.name, content),
            [(path.name, style) for path, style in zip(args.styles, styles, strict=True)],
            params, progress)
    else:
        document, data = local.stylize(settings, content, styles, params, progress)
    write_output(args.output, data)
    seconds = round(time.monotonic() - started, 3)
    options = document.get("options") or {}
    finish(
        {"output": str(args.output), "job_id": document["id"] if args.server else None,
         "model": options.get("model"), "steps": document.get("step"),
         "seed": options.get("seed"), "losses": document.get("losses"), "seconds": seconds,
         "compute_seconds": document.get("seconds"), "options": options},
        as_json=args.json,
        line=f"wrote {args.output} ({document.get('step')} steps, {seconds:.1f} s)",
    )
    return OK
