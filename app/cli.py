"""The `atelier` command: serve, manage models, generate and stylize locally or remotely.

Exit codes: 0 success, 1 the work failed (or the server refused it), 2 bad usage or input,
3 the server could not be reached, 130 interrupted (a remote job is cancelled first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.settings import Settings

EPILOG = """examples:
  atelier models pull                      fetch and verify every model in the catalog
  atelier models list                      show what is in the catalog and what is pulled
  atelier serve --port 8000                run the HTTP service (settings also from ATELIER_*)
  atelier generate --seed 42 -n 8 -o faces.png
  atelier stylize photo.jpg starry.jpg -o out.png --size 256 --steps 200
  atelier stylize photo.jpg wave.jpg scream.jpg --style-blend 0.7,0.3 --server http://127.0.0.1:8000

exit codes: 0 ok, 1 failed, 2 bad usage or input, 3 server unreachable, 130 interrupted
"""

OK, FAILED, USAGE, UNREACHABLE, INTERRUPTED = 0, 1, 2, 3, 130


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def _format_for(path: Path) -> Any:
    from app.engines.imaging import ImageFormat

    suffix = path.suffix.lower().lstrip(".") or "png"
    try:
        return ImageFormat({"jpg": "jpeg"}.get(suffix, suffix))
    except ValueError:
        raise CliError(f"cannot write {path.suffix} files; use .png, .jpg or .webp",
                       USAGE) from None


# ---- models / serve -----------------------------------------------------------------


def _cmd_models_list(settings: Settings, _args: argparse.Namespace) -> int:
    from app.catalog import Catalog

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    for entry in catalog.entries():
        mark = "*" if entry.name == settings.default_model else " "
        print(f"{mark} {entry.name:24} {entry.manifest.kind:5} {entry.status.value:12} "
              f"{entry.manifest.license.name:10} {entry.manifest.title}")
        if entry.message:
            print(f"    {entry.message}")
    return OK


def _cmd_models_pull(settings: Settings, args: argparse.Namespace) -> int:
    from app.catalog import Catalog
    from app.catalog.pull import PullError, pull

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    names = args.names or list(catalog.manifests)
    unknown = [n for n in names if n not in catalog.manifests]
    if unknown:
        raise CliError(f"unknown model(s): {', '.join(unknown)}", USAGE)
    failed = 0
    for name in names:
        try:
            fetched = pull(catalog.manifests[name], settings.model_dir, force=args.force)
        except PullError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: {'pulled' if fetched else 'already present'}"
              f" ({settings.model_dir / (name + '.safetensors')})")
    return FAILED if failed else OK


def _cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from app.main import create_app

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=False,  # the app writes one structured line per request itself
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) or None,
        log_level=settings.log_level.lower(),
    )
    return OK


# ---- remote helpers ------------------------------------------------------------------


def _client(server: str) -> Any:
    import httpx

    return httpx.Client(base_url=server.rstrip("/"), timeout=httpx.Timeout(60, read=None))


def _check(response: Any) -> Any:
    if response.is_success:
        return response
    try:
        problem = response.json()
        message = f"{problem.get('title')}: {problem.get('detail') or ''}".rstrip(": ")
    except ValueError:
        message = f"HTTP {response.status_code}"
    retry = response.headers.get("retry-after")
    if retry:
        message += f" (retry after {retry} s)"
    raise CliError(f"the server answered {response.status_code}: {message}")


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    event, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


# ---- generate ------------------------------------------------------------------------


def _cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    fmt = _format_for(args.output)
    if args.server:
        body = {"n": args.n, "seed": args.seed, "truncation": args.truncation,
                "model": args.model, "format": fmt.value}
        with _client(args.server) as client:
            response = _check(client.post("/generate", json=body))
        data, seed = response.content, response.headers.get("x-seed")
    else:
        data, seed = _generate_locally(settings, args, fmt)
    args.output.write_bytes(data)
    print(f"wrote {args.output} (seed {seed}, {args.n} image{'s' if args.n > 1 else ''})")
    return OK


def _generate_locally(settings: Settings, args: argparse.Namespace, fmt: Any) -> tuple[bytes, int]:
    from app.catalog import Catalog
    from app.pool import Lane, WorkerPool
    from app.pool.runtime import DeviceRuntime
    from app.services.encoding import Encoder
    from app.services.errors import ServiceError
    from app.services.generation import GenerationService

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    pool = WorkerPool(
        settings.device_list()[:1],
        lambda d: DeviceRuntime(d, catalog, torch_threads=settings.torch_threads),
        lanes=[Lane("generate", max_batch_images=settings.max_batch_images)],
    )
    encoder = Encoder(1)
    service = GenerationService(catalog, pool, encoder)

    async def run() -> tuple[bytes, int]:
        generated = await service.generate(
            model=args.model or settings.default_model, n=args.n, seed=args.seed,
            truncation=args.truncation, timeout_s=settings.max_request_timeout_s,
        )
        if args.n == 1:
            return await service.encode_one(generated.images[0], fmt), generated.seeds[0]
        return await service.encode_grid(generated.images, fmt), generated.seeds[0]

    pool.start()
    try:
        return asyncio.run(run())
    except ServiceError as exc:
        raise CliError(str(exc)) from exc
    finally:
        pool.shutdown(0)
        encoder.close()


# ---- stylize -------------------------------------------------------------------------


def _style_fields(args: argparse.Namespace) -> dict[str, str]:
    fields = {
        "steps": args.steps, "size": args.size, "content_weight": args.content_weight,
        "style_weight": args.style_weight, "tv_weight": args.tv_weight,
        "optimizer": args.optimizer, "init": args.init, "style_scale": args.style_scale,
        "style_blend": args.style_blend, "preserve_color": args.preserve_color,
        "seed": args.seed,
    }
    return {k: str(v) for k, v in fields.items() if v is not None}


def _cmd_stylize(settings: Settings, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    fmt = _format_for(args.output)
    for path in [args.content, *args.styles]:
        if not path.is_file():
            raise CliError(f"{path}: no such file", USAGE)
    bar = tqdm(total=args.steps or settings.default_steps, unit="step", disable=args.quiet,
               dynamic_ncols=True)
    try:
        if args.server:
            data = _stylize_remotely(args, fmt, bar)
        else:
            data = _stylize_locally(settings, args, fmt, bar)
    finally:
        bar.close()
    args.output.write_bytes(data)
    print(f"wrote {args.output}")
    return OK


def _progress(bar: Any, step: int, steps: int, losses: dict[str, float] | None) -> None:
    bar.total = steps
    bar.n = step
    if losses:
        bar.set_postfix(content=f"{losses['content']:.3g}", style=f"{losses['style']:.3g}",
                        refresh=False)
    bar.refresh()


def _stylize_remotely(args: argparse.Namespace, fmt: Any, bar: Any) -> bytes:
    files = [("content", (args.content.name, args.content.read_bytes()))] + [
        ("style", (p.name, p.read_bytes())) for p in args.styles
    ]
    data = {**_style_fields(args), "format": fmt.value}
    with _client(args.server) as client:
        accepted = _check(client.post("/stylize", files=files, data=data,
                                      headers={"Prefer": "respond-async"}))
        job_id = accepted.json()["id"]
        try:
            with client.stream("GET", f"/jobs/{job_id}/events") as stream:
                for event, payload in _sse(stream.iter_lines()):
                    if event in ("progress", "succeeded"):
                        _progress(bar, payload["step"], payload["steps"], payload["losses"])
                    if event == "failed":
                        error = payload.get("error") or {}
                        raise CliError(f"the job failed: {error.get('detail', 'unknown')}")
                    if event == "canceled":
                        raise CliError("the job was cancelled on the server")
                    if event == "succeeded":
                        break
            return bytes(_check(client.get(f"/jobs/{job_id}/result")).content)
        except KeyboardInterrupt:
            client.delete(f"/jobs/{job_id}")
            raise


def _stylize_locally(settings: Settings, args: argparse.Namespace, fmt: Any, bar: Any) -> bytes:
    from app.catalog import Catalog, ModelStatus
    from app.engines import imaging
    from app.engines.imaging import ImageInputError
    from app.engines.style import Cancelled
    from app.pool import Lane, StylizeWork, WorkerPool
    from app.pool.runtime import DeviceRuntime
    from app.services.stylize import StyleRequest, style_options

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    entry = catalog.entry(settings.style_model)
    if entry is None or entry.status is not ModelStatus.AVAILABLE:
        raise CliError(entry.message if entry else f"no model {settings.style_model!r}")
    try:
        content = imaging.decode_upload(args.content.read_bytes(), settings.max_pixels)
        styles = [imaging.decode_upload(p.read_bytes(), settings.max_pixels)
                  for p in args.styles]
    except ImageInputError as exc:
        raise CliError(str(exc), USAGE) from exc
    blend = tuple(float(w) for w in args.style_blend.split(",")) if args.style_blend else None
    request = StyleRequest(
        steps=args.steps, size=args.size, content_weight=args.content_weight,
        style_weight=args.style_weight, tv_weight=args.tv_weight, optimizer=args.optimizer,
        init=args.init, style_scale=args.style_scale, style_blend=blend,
        preserve_color=args.preserve_color, seed=args.seed,
    )
    options = style_options(request, entry.manifest, default_size=settings.default_size,
                            default_steps=settings.default_steps, progress_every=1)
    work = StylizeWork(model=entry.name, content=content, styles=styles, options=options,
                       on_progress=lambda p: _progress(bar, p.step, p.steps,
                                                       vars(p.losses)))
    # A local run has the machine to itself: torch's default threads, not the server's one.
    pool = WorkerPool(settings.device_list()[:1],
                      lambda d: DeviceRuntime(d, catalog, torch_threads=0),
                      lanes=[Lane("stylize", queue_size=1, max_batch_images=1)])
    pool.start()
    try:
        result = pool.submit(work).result()
    except KeyboardInterrupt:
        work.cancel.set()
        raise
    except Cancelled as exc:
        raise CliError("cancelled") from exc
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from exc
    finally:
        pool.shutdown(5)
    return imaging.encode(result.image, fmt)


# ---- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier", description="Atelier: GAN images and neural style transfer.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="bind address (ATELIER_HOST)")
    serve.add_argument("--port", type=int, help="port (ATELIER_PORT)")
    serve.set_defaults(func=_cmd_serve)

    models = sub.add_parser("models", help="list or pull catalog models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    lst = models_sub.add_parser("list", help="show the catalog and what is pulled")
    lst.set_defaults(func=_cmd_models_list)
    pull = models_sub.add_parser("pull", help="fetch, verify and convert weights")
    pull.add_argument("names", nargs="*", help="models to pull (default: all)")
    pull.add_argument("--force", action="store_true", help="pull even if present")
    pull.set_defaults(func=_cmd_models_pull)

    gen = sub.add_parser(
        "generate", help="generate GAN images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  atelier generate --seed 42 -n 8 -o faces.png\n"
               "  atelier generate -o face.webp --server http://127.0.0.1:8000",
    )
    gen.add_argument("-n", type=int, default=1, help="number of images (a grid when > 1)")
    gen.add_argument("--seed", type=int, help="seed of the first image (random if omitted)")
    gen.add_argument("--truncation", type=float, help="truncation threshold (> 0)")
    gen.add_argument("--model", help="catalog model (default ATELIER_DEFAULT_MODEL)")
    gen.add_argument("-o", "--output", type=Path, default=Path("generated.png"),
                     help="output file; its suffix picks png, jpg or webp")
    gen.add_argument("--server", help="use a running service at this URL instead of local")
    gen.set_defaults(func=_cmd_generate)

    sty = sub.add_parser(
        "stylize", help="paint CONTENT in the style of STYLE images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  atelier stylize photo.jpg starry.jpg -o out.png --steps 200\n"
               "  atelier stylize photo.jpg wave.jpg scream.jpg --style-blend 0.7,0.3 "
               "--preserve-color luminance --server http://127.0.0.1:8000",
    )
    sty.add_argument("content", type=Path, help="content image")
    sty.add_argument("styles", type=Path, nargs="+", metavar="STYLE", help="style image(s)")
    sty.add_argument("-o", "--output", type=Path, default=Path("stylized.png"),
                     help="output file; its suffix picks png, jpg or webp")
    sty.add_argument("--steps", type=int, help="optimisation steps (default 300)")
    sty.add_argument("--size", type=int, help="long side of the output (default 512)")
    sty.add_argument("--style-weight", type=float, help="style loss weight (model default)")
    sty.add_argument("--content-weight", type=float, help="content loss weight")
    sty.add_argument("--tv-weight", type=float, help="total-variation weight")
    sty.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    sty.add_argument("--init", choices=["content", "noise", "random"], default="content")
    sty.add_argument("--style-scale", type=float, default=1.0,
                     help="style image size relative to the output")
    sty.add_argument("--style-blend", help="weights of the style images, e.g. 0.7,0.3")
    sty.add_argument("--preserve-color", choices=["none", "luminance", "match"],
                     default="none")
    sty.add_argument("--seed", type=int, help="seed of noise initialisations")
    sty.add_argument("--server", help="use a running service at this URL instead of local")
    sty.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sty.set_defaults(func=_cmd_stylize)
    return parser


def main(argv: list[str] | None = None) -> int:
    import httpx

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(Settings(), args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except httpx.TransportError as exc:
        print(f"error: cannot reach {getattr(args, 'server', '')}: {exc}", file=sys.stderr)
        return UNREACHABLE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
