"""`atelier serve` and `atelier models list|pull`."""

from __future__ import annotations

import argparse
import sys

from app.cli.errors import FAILED, OK, USAGE, CliError
from app.settings import Settings


def models_list(settings: Settings, _args: argparse.Namespace) -> int:
    from app.catalog import Catalog

    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    for entry in catalog.entries():
        mark = "*" if entry.name == settings.default_model else " "
        print(f"{mark} {entry.name:24} {entry.manifest.kind:5} {entry.status.value:12} "
              f"{entry.manifest.license.name:10} {entry.manifest.title}")
        if entry.message:
            print(f"    {entry.message}")
    return OK


def models_pull(settings: Settings, args: argparse.Namespace) -> int:
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


def serve(settings: Settings, args: argparse.Namespace) -> int:
    """Until SIGINT/SIGTERM; then the app drains (one grace period) and this exits 0."""
    from app.serving import serve as run_server

    overrides = {k: v for k, v in {"host": args.host, "port": args.port,
                                    "backend": args.backend}.items() if v is not None}
    settings = settings.model_copy(update=overrides)
    if settings.backend == "ray":
        from app.distributed.serving import SettingsError, serve_on_ray

        try:
            serve_on_ray(settings)
        except SettingsError as exc:
            raise CliError(str(exc), USAGE) from None
        return OK
    run_server(settings)
    return OK
