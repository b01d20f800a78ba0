"""The argument parser. The options of `stylize` are derived from `StyleParams` (names, help,
choices), so a new job parameter is one edit there; `style_params`/`generate_request` turn
the parsed arguments into the same models the HTTP API validates."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from app.cli.errors import from_validation
from app.engines.imaging import ImageFormat
from app.services.params import GenerateRequest, StyleParams
from app.training.cli import add_parser as add_train_parser

EPILOG = """examples:
  atelier models pull                      fetch and verify every model in the catalog
  atelier models list                      show what is in the catalog and what is pulled
  atelier serve --port 8000                run the HTTP service (settings also from ATELIER_*)
  atelier generate --seed 42 -n 8 -o faces.png
  atelier stylize photo.jpg starry.jpg -o out.png --size 256 --steps 200
  atelier stylize photo.jpg wave.jpg scream.jpg --style-blend 0.7,0.3 --server http://127.0.0.1:8000

exit codes: 0 ok, 1 failed, 2 bad usage or input, 3 server unreachable, 130 interrupted
"""

# StyleParams fields that are not options: the format comes from the output's suffix, and
# previews are for the web studio.
NOT_OPTIONS = frozenset({"format", "preview_every"})
STYLE_OPTIONS = [name for name in StyleParams.model_fields if name not in NOT_OPTIONS]
GENERATE_OPTIONS = {"n": "-n", "seed": "--seed", "truncation": "--truncation",
                    "model": "--model"}


def _unwrap(annotation: Any) -> Any:
    """`X | None` and `Annotated[X, ...]` to X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _add_field_option(parser: argparse.ArgumentParser, name: str, field: FieldInfo) -> None:
    """One option from a model field: its values are validated by the model, not argparse."""
    help_text = (field.description or "").replace("`", "").rstrip(".")
    kind = _unwrap(field.annotation)
    options: dict[str, Any] = {"dest": name, "default": None}
    if typing.get_origin(kind) is typing.Literal:
        options["choices"] = [str(choice) for choice in typing.get_args(kind)]
    elif typing.get_origin(kind) is list:
        options["action"] = "append"  # repeated or comma-separated, as in the API's form
        options["metavar"] = "W[,W...]"
    else:
        options["metavar"] = {int: "N", float: "X"}.get(kind, "VALUE")
    if field.default is not None:
        help_text += f" (default {field.default})"
    parser.add_argument("--" + name.replace("_", "-"), help=help_text, **options)


def _output_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("-o", "--output", type=Path, default=Path(default),
                        help=f"output file; its suffix picks png, jpg or webp (default {default})")
    parser.add_argument("--server", metavar="URL",
                        help="use a running service at this URL instead of running locally")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (output, seeds or job, losses, seconds) "
                             "instead of the human line; no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier", description="Atelier: GAN images and neural style transfer.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP service")
    serve.add_argument("--host", help="bind address (ATELIER_HOST)")
    serve.add_argument("--port", type=int, help="port (ATELIER_PORT)")
    serve.add_argument("--backend", choices=("local", "ray"),
                       help="local: this process drives the devices; ray: Ray Serve"
                       " deployments on a Ray cluster (ATELIER_BACKEND)")

    models = sub.add_parser("models", help="list or pull catalog models")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="show the catalog and what is pulled")
    pull = models_sub.add_parser("pull", help="fetch, verify and convert weights")
    pull.add_argument("names", nargs="*", help="models to pull (default: all)")
    pull.add_argument("--force", action="store_true", help="pull even if present")

    gen = sub.add_parser(
        "generate", help="generate GAN images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  atelier generate --seed 42 -n 8 -o faces.png\n"
               "  atelier generate -o face.webp --server http://127.0.0.1:8000\n"
               "  atelier generate -n 4 --json -o faces.png",
    )
    gen.add_argument("-n", metavar="N", help="number of images (a grid when > 1; default 1)")
    gen.add_argument("--seed", metavar="N",
                     help="seed of the first image; image i uses seed + i (random if omitted)")
    gen.add_argument("--truncation", metavar="X",
                     help="truncation threshold (> 0): lower gives more typical images")
    gen.add_argument("--model", help="catalog model (default ATELIER_DEFAULT_MODEL)")
    _output_options(gen, "generated.png")

    sty = sub.add_parser(
        "stylize", help="paint CONTENT in the style of STYLE images",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  atelier stylize photo.jpg starry.jpg -o out.png --steps 200\n"
               "  atelier stylize photo.jpg wave.jpg scream.jpg --style-blend 0.7,0.3 "
               "--preserve-color luminance --server http://127.0.0.1:8000",
    )
    sty.add_argument("content", type=Path, help="content image")
    sty.add_argument("styles", type=Path, nargs="+", metavar="STYLE", help="style image(s)")
    _output_options(sty, "stylized.png")
    sty.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    for name in STYLE_OPTIONS:
        _add_field_option(sty, name, StyleParams.model_fields[name])
    add_train_parser(sub)
    return parser


def _validated(model: type[BaseModel], values: dict[str, Any],
               options: dict[str, str] | None = None) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise from_validation(exc, options) from None


def style_params(args: argparse.Namespace, fmt: ImageFormat) -> StyleParams:
    """The job's parameters, validated as the API validates them (exit 2 naming the option)."""
    given = {name: getattr(args, name) for name in STYLE_OPTIONS
             if getattr(args, name, None) is not None}
    params: StyleParams = _validated(StyleParams, {**given, "format": fmt.value})
    return params


def generate_request(args: argparse.Namespace, fmt: ImageFormat) -> GenerateRequest:
    """The body of a /generate request (also what a local run does), validated."""
    given = {name: getattr(args, name) for name in GENERATE_OPTIONS
             if getattr(args, name, None) is not None}
    request: GenerateRequest = _validated(GenerateRequest, {**given, "format": fmt.value},
                                          GENERATE_OPTIONS)
    return request
