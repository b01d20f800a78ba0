"""The `atelier` command: serve, manage models, generate images locally."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from app.settings import Settings

EPILOG = """examples:
  atelier models pull                 fetch and verify every model in the catalog
  atelier models list                 show what is in the catalog and what is pulled
  atelier serve --port 8000           run the HTTP service (settings also from ATELIER_*)
  atelier generate --seed 42 -n 8 -o faces.png
"""


def _cmd_models_list(settings: Settings, _args: argparse.Namespace) -> int:
    from app.catalog import Catalog

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    for entry in catalog.entries():
        mark = "*" if entry.name == settings.default_model else " "
        print(f"{mark} {entry.name:24} {entry.manifest.kind:5} {entry.status.value:12} "
              f"{entry.manifest.license.name:8} {entry.manifest.title}")
        if entry.message:
            print(f"    {entry.message}")
    return 0


def _cmd_models_pull(settings: Settings, args: argparse.Namespace) -> int:
    from app.catalog import Catalog
    from app.catalog.pull import PullError, pull

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    names = args.names or list(catalog.manifests)
    unknown = [n for n in names if n not in catalog.manifests]
    if unknown:
        print(f"error: unknown model(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
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
    return 1 if failed else 0


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
    return 0


def _cmd_generate(settings: Settings, args: argparse.Namespace) -> int:
    from app.catalog import Catalog
    from app.engines.imaging import ImageFormat
    from app.pool import Lane, WorkerPool
    from app.pool.runtime import DeviceRuntime
    from app.services.encoding import Encoder
    from app.services.errors import ServiceError
    from app.services.generation import GenerationService

    suffix = args.output.suffix.lower().lstrip(".")
    fmt = ImageFormat({"jpg": "jpeg"}.get(suffix, suffix or "png"))
    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    pool = WorkerPool(
        settings.device_list()[:1],
        lambda d: DeviceRuntime(d, catalog, torch_threads=settings.torch_threads),
        lanes=[Lane("generate", max_batch_images=settings.max_batch_images)],
    )
    encoder = Encoder(1)
    service = GenerationService(catalog, pool, encoder)

    async def run() -> bytes:
        generated = await service.generate(
            model=args.model or settings.default_model, n=args.n, seed=args.seed,
            truncation=args.truncation, timeout_s=settings.max_request_timeout_s,
        )
        print(f"seeds {generated.seeds[0]}..{generated.seeds[-1]} ({generated.model})")
        if args.n == 1:
            return await service.encode_one(generated.images[0], fmt)
        return await service.encode_grid(generated.images, fmt)

    pool.start()
    try:
        data = asyncio.run(run())
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        pool.shutdown(0)
        encoder.close()
    args.output.write_bytes(data)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier", description="Atelier image generation service.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    gen = sub.add_parser("generate", help="generate images locally, without a server")
    gen.add_argument("-n", type=int, default=1, help="number of images (a grid when > 1)")
    gen.add_argument("--seed", type=int, help="seed of the first image (random if omitted)")
    gen.add_argument("--truncation", type=float, help="truncation threshold (> 0)")
    gen.add_argument("--model", help="catalog model (default ATELIER_DEFAULT_MODEL)")
    gen.add_argument("-o", "--output", type=Path, default=Path("generated.png"),
                     help="output file; its suffix picks png, jpg or webp")
    gen.set_defaults(func=_cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(Settings(), args))


if __name__ == "__main__":
    sys.exit(main())
