"""`atelier train`: train a DCGAN on a folder of images and add it to the catalog.

`add_parser(subparsers)` adds the subcommand; `run(settings, args)` runs it and returns the
exit code: 0 trained (or stopped by --minutes / --target-kid), 2 bad options or data, 1 a
failure (no disk room, a diverged run), 130 stopped by Ctrl-C (after a checkpoint).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import PROJECT_ROOT, Settings
from app.training.errors import RunConflict, TrainingError, TrainingUsageError

if TYPE_CHECKING:
    import torch

OK, FAILED, USAGE, INTERRUPTED = 0, 1, 2, 130
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # a catalog model's name (Manifest.name)
DEFAULT_EPOCHS = 25
SIZES = (64, 128)  # app.training.nets.SIZES; this module imports no torch until it runs

EPILOG = """examples:
  atelier train --data ~/pictures/cats --name cats-64 --minutes 30
  atelier train --data ~/pictures/cats --name cats-64 --minutes 30 --resume   # 30 more
  atelier train --data faces/ --name faces-128 --size 128 --epochs 50 --device cuda

The run lives in var/train/NAME (checkpoint.pt, samples/latest.png, log.jsonl); the model
in the model dir (NAME.safetensors, trained/NAME.toml). A running server serves it after
`curl -X POST http://127.0.0.1:8000/models/reload`.

exit codes: 0 trained, 1 failed, 2 bad options or data, 130 interrupted (checkpoint saved)
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add `train` to an argparse subparsers object (`parser.add_subparsers()`)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train", help="train a GAN on a folder of images and add it to the catalog",
        description="Train a DCGAN generator on your images (non-saturating GAN loss, Adam, an"
        " EMA of the generator, which is what gets served), scored by KID/FID on VGG19"
        " features, and add it to the catalog for /generate.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = p.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, metavar="DIR",
                      help="folder of images (PNG, JPEG, WebP, BMP, TIFF, GIF; subfolders too)")
    data.add_argument("--name", required=True,
                      help="catalog name of the model (lowercase letters, digits, . _ -)")
    data.add_argument("--size", type=int, choices=SIZES, default=64,
                      help="image size in pixels (default 64; 128 adds one block to G and D)")
    data.add_argument("--crop", choices=("center", "resize"), default="center",
                      help="center: the centred square of each image; resize: the whole image"
                           " squashed to a square (default center)")
    data.add_argument("--no-flip", dest="flip", action="store_false",
                      help="no random horizontal flips (default: flip half the images)")
    data.add_argument("--skip-unreadable", action="store_true",
                      help="train without the images that cannot be read instead of refusing")
    length = p.add_argument_group("how long (the first limit reached ends the run)")
    length.add_argument("--steps", type=_positive_int, metavar="N",
                        help="total steps of the run, counted from its start (one step: a D"
                             " and a G update on one batch)")
    length.add_argument("--epochs", type=_positive_int, metavar="N",
                        help=f"total passes over the data (default {DEFAULT_EPOCHS} unless"
                             " --steps or --minutes is given)")
    length.add_argument("--minutes", type=_positive_float, metavar="M",
                        help="stop after M minutes of this session's training")
    length.add_argument("--target-kid", type=float, metavar="X",
                        help="stop at the first evaluation with KID <= X")
    model = p.add_argument_group("model and optimisation")
    model.add_argument("--batch-size", type=_positive_int, metavar="N",
                       help="images per step (default 128, or fewer when the data has fewer)")
    model.add_argument("--loss", choices=("non-saturating", "minimax"),
                       default="non-saturating",
                       help="generator loss: -log D(G(z)) (default) or the minimax form"
                            " log(1 - D(G(z)))")
    model.add_argument("--lr", type=_positive_float, default=2e-4,
                       help="Adam learning rate of G and D (default 2e-4)")
    model.add_argument("--betas", type=float, nargs=2, default=(0.5, 0.999),
                       metavar=("B1", "B2"), help="Adam betas (default 0.5 0.999)")
    model.add_argument("--nz", type=_positive_int, default=100, help="latent size (default 100)")
    model.add_argument("--ngf", type=_positive_int, default=64,
                       help="generator feature maps (default 64)")
    model.add_argument("--ndf", type=_positive_int, default=64,
                       help="discriminator feature maps (default 64)")
    model.add_argument("--ema-decay", type=float, default=0.999, metavar="X",
                       help="decay of the moving average of G's weights (default 0.999)")
    model.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    dev = p.add_argument_group("device")
    dev.add_argument("--device", default="auto",
                     help="torch device: auto (the first GPU, else the CPU), cpu, cuda:N")
    dev.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                     help="auto: bf16 mixed precision on a GPU, fp32 on the CPU")
    dev.add_argument("--threads", type=_positive_int, metavar="N",
                     help="CPU threads of torch (default: torch's choice)")
    dev.add_argument("--workers", type=_positive_int, default=4, metavar="N",
                     help="threads decoding the images (default 4)")
    dev.add_argument("--compile", action="store_true",
                     help="torch.compile G and D (slower start, maybe faster steps)")
    out = p.add_argument_group("run, samples, evaluation")
    out.add_argument("--run-dir", type=Path, metavar="DIR",
                     help="checkpoint, sample grids and log (default var/train/NAME)")
    out.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir from its checkpoint")
    out.add_argument("--restart", action="store_true",
                     help="discard the run in --run-dir and start over")
    out.add_argument("--sample-every", type=_non_negative_int, default=1000, metavar="N",
                     help="steps between sample grids (default 1000; 0: only at the end)")
    out.add_argument("--eval-every", type=_non_negative_int, default=5000, metavar="N",
                     help="steps between KID/FID evaluations (default 5000; 0: only at the"
                          " end)")
    out.add_argument("--eval-images", type=_positive_int, default=1000, metavar="N",
                     help="images per set in an evaluation (default 1000, at most the data's)")
    out.add_argument("--metric-model", default="vgg19-caffe", metavar="NAME",
                     help="catalog VGG whose features KID/FID use (default vgg19-caffe)")
    out.add_argument("--checkpoint-every", type=_non_negative_int, default=0, metavar="N",
                     help="steps between checkpoints (default 0: every --checkpoint-minutes)")
    out.add_argument("--checkpoint-minutes", type=_positive_float, default=10.0, metavar="M",
                     help="minutes between checkpoints (default 10)")
    out.add_argument("--title", help="the model's title in the catalog")
    out.add_argument("--description", help="the model's description in the catalog")
    out.add_argument("--license", default="unspecified", dest="license_name",
                     help="licence of the trained weights (default unspecified)")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    out.add_argument("--json", action="store_true",
                     help="print the summary as one JSON object")
    p.set_defaults(func=run)
    return p


def run(settings: Settings, args: argparse.Namespace) -> int:
    """Train as the options say; the exit code (0, 1, 2 or 130)."""
    try:
        return _run(settings, args)
    except TrainingError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before the loop (reading images) or a second Ctrl-C
        print("interrupted", file=sys.stderr)
        return INTERRUPTED


def _device(text: str) -> torch.device:
    import torch

    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise TrainingUsageError(f"--device: unknown device {text!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingUsageError("--device: no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda:0")
    elif device.type != "cpu":
        raise TrainingUsageError(f"--device: {text!r} is neither cpu nor cuda")
    return device


def _check_options(settings: Settings, args: argparse.Namespace) -> None:
    from app.catalog.manifest import load_manifests

    if not NAME.match(args.name):
        raise TrainingUsageError(
            f"--name: {args.name!r} is not a catalog name (lowercase letters, digits, ., _, -;"
            " starting with a letter or digit)")
    if args.resume and args.restart:
        raise TrainingUsageError("--resume and --restart contradict each other")
    if not 0 <= args.ema_decay < 1:
        raise TrainingUsageError(f"--ema-decay: must be in [0, 1), not {args.ema_decay}")
    if not all(0 <= b < 1 for b in args.betas):
        raise TrainingUsageError(f"--betas: each must be in [0, 1), not {args.betas}")
    try:
        shipped = load_manifests(settings.catalog_dir)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"the catalog {settings.catalog_dir} cannot be read: {exc}") from exc
    if args.name in shipped:
        raise RunConflict(f"--name: {args.name!r} is a model of the catalog "
                          f"({shipped[args.name].path}); choose another name")


def _run(settings: Settings, args: argparse.Namespace) -> int:
    import torch

    from app.catalog import Catalog
    from app.training.data import load_image_folder
    from app.training.export import export_model
    from app.training.metrics import Evaluator, FeaturesUnavailable, VGGFeatures
    from app.training.session import (
        RunDir,
        Schedule,
        Session,
        check_room,
        load_checkpoint,
    )
    from app.training.trainer import TrainConfig, Trainer, _seed, threads

    _check_options(settings, args)
    device = _device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    run_dir = RunDir(args.run_dir or PROJECT_ROOT / "var" / "train" / args.name)
    say = _printer(args)

    existing = run_dir.checkpoint.is_file()
    if args.resume and not existing:
        raise TrainingUsageError(f"--resume: there is no checkpoint in {run_dir.root}")
    if existing and not (args.resume or args.restart):
        raise RunConflict(
            f"a run named {args.name!r} exists in {run_dir.root}: --resume to continue it,"
            " --restart to start over (or another --name / --run-dir)")

    with threads(args.threads):
        # Room first: it is the cheap check, reading a large folder is not.
        provisional = TrainConfig(size=args.size, nz=args.nz, ngf=args.ngf, ndf=args.ndf)
        grids = 2 + (args.steps // args.sample_every if args.steps and args.sample_every
                     else 100)
        check_room(provisional, run_dir.root, settings.model_dir, min(grids, 1000))

        from tqdm import tqdm

        with tqdm(desc=f"reading {args.data}", unit="image", file=sys.stderr,
                  disable=args.quiet or args.json, dynamic_ncols=True) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            folder = load_image_folder(args.data, args.size, crop=args.crop,
                                       max_pixels=settings.max_pixels, workers=args.workers,
                                       skip_unreadable=args.skip_unreadable, progress=progress)
        notes = [f"{len(folder)} images"]
        if folder.skipped:
            notes.append(f"{len(folder.skipped)} unreadable skipped")
        if folder.upscaled:
            notes.append(f"{folder.upscaled} smaller than {args.size} px, enlarged")
        if folder.ignored:
            notes.append(f"{folder.ignored} other files ignored")
        say(", ".join(notes))

        batch = args.batch_size or min(128, len(folder))
        if batch > len(folder):
            raise TrainingUsageError(f"--batch-size: {batch} is more than the {len(folder)}"
                                     " images of the data; lower it")
        config = TrainConfig(
            size=args.size, batch_size=batch, nz=args.nz, ngf=args.ngf, ndf=args.ndf,
            loss=args.loss, lr=args.lr, beta1=args.betas[0], beta2=args.betas[1],
            ema_decay=args.ema_decay, flip=args.flip, seed=args.seed, precision=precision)
        trainer = Trainer(config, folder.images, device, compile=args.compile)
        data = folder.describe()
        if args.restart:
            run_dir.clear()
        elif args.resume:
            try:
                state = load_checkpoint(run_dir.checkpoint, device)
            except Exception as exc:  # truncated, not a checkpoint, another torch's pickle
                raise RunConflict(f"--resume: {run_dir.checkpoint} cannot be read"
                                  f" ({type(exc).__name__}: {exc}); --restart to start over"
                                  ) from exc
            if state.get("data_sha256") != data["sha256"]:
                raise RunConflict(
                    f"--resume: the checkpoint in {run_dir.root} was trained on other data"
                    f" than {args.data} now holds; --restart to start over")
            if state.get("config") != config.as_dict():
                theirs: dict[str, Any] = state.get("config") or {}
                differ = [f"{k} {theirs.get(k)!r} (now {v!r})"
                          for k, v in config.as_dict().items() if theirs.get(k) != v]
                raise RunConflict("--resume: the checkpoint was made with other settings: "
                                  + ", ".join(differ))
            for warning in trainer.load_state_dict(state):
                say(f"warning: {warning}")
            say(f"resuming at step {trainer.step} (epoch {trainer.epoch})")

        total = args.steps
        if total is None and args.epochs is not None:
            total = args.epochs * trainer.steps_per_epoch
        if total is None and args.minutes is None:
            total = DEFAULT_EPOCHS * trainer.steps_per_epoch
        if total is not None and total <= trainer.step:
            raise TrainingUsageError(
                f"the run is at step {trainer.step} already; give a larger --steps or"
                " --epochs to train on")

        metric_state: dict[str, Any] = {}

        def make_evaluator() -> Evaluator | None:
            try:
                features = VGGFeatures.from_catalog(
                    Catalog(settings.catalog_dir, settings.model_dir), args.metric_model,
                    device)
            except (FeaturesUnavailable, OSError, ValueError) as exc:
                say(f"warning: no KID/FID: {exc}")
                return None
            count = min(args.eval_images, len(folder))
            pick = torch.randperm(len(folder), generator=torch.Generator().manual_seed(
                _seed(config.seed, 7)))[:count]
            metric_state["features"] = features.describe()
            return Evaluator(features, folder.images[pick])

        schedule = Schedule(
            total_steps=total, minutes=args.minutes, sample_every=args.sample_every,
            eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
            checkpoint_minutes=args.checkpoint_minutes, target_kid=args.target_kid)
        session = Session(trainer, run_dir, schedule, evaluator=make_evaluator,
                          progress=not (args.quiet or args.json),
                          extra_state={"data_sha256": data["sha256"]})
        say(f"training {args.name}: {config.size} px, batch {batch}, {trainer.steps_per_epoch}"
            f" steps an epoch, on {device} ({precision}); samples in {run_dir.samples}")
        outcome = session.run()
        summary = session.summary()
        if outcome == "interrupted":
            say(f"interrupted at step {trainer.step}: checkpoint {run_dir.checkpoint}; "
                "continue with the same command and --resume")
            return INTERRUPTED

        net = trainer.served_generator()
        score = session.last_score
        metrics: dict[str, Any] = {}
        if score is not None:
            metrics = {**score.as_dict(), "step": trainer.step,
                       "features": metric_state.get("features", ""),
                       "method": "KID: unbiased MMD^2, cubic polynomial kernel; FID: Frechet"
                                 " distance of Gaussian fits; not comparable to Inception"
                                 " numbers"}
        settings_record = {**config.as_dict(), "steps": total, "epochs": args.epochs,
                           "minutes": args.minutes, "target_kid": args.target_kid,
                           "device": str(device), "outcome": outcome}
        exported = export_model(
            trainer, net, name=args.name, model_dir=settings.model_dir,
            title=args.title or f"{args.name} (DCGAN {config.size}x{config.size}, trained here)",
            description=args.description or (
                f"DCGAN generator trained here on {len(folder)} images from {args.data}."),
            license_name=args.license_name,
            attribution=f"Trained with atelier train on {len(folder)} images from"
                        f" {args.data}; the images' own licences apply.",
            settings=settings_record, data=data, metrics=metrics,
            seconds=float(summary["seconds"]))
    _print_summary(args, summary, outcome, score, metric_state, exported, run_dir)
    return OK


def _printer(args: argparse.Namespace) -> Any:
    def say(message: str) -> None:
        if not args.json:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
    return say


def _print_summary(args: argparse.Namespace, summary: dict[str, Any], outcome: str,
                   score: Any, metric_state: dict[str, Any], exported: Any,
                   run_dir: Any) -> None:
    if args.json:
        print(json.dumps({
            "model": args.name, "outcome": outcome, **summary,
            "metrics": None if score is None else score.as_dict(),
            "weights": str(exported.weights), "manifest": str(exported.manifest_path),
            "samples": str(run_dir.samples / "latest.png")}))
        return
    why = {"finished": "", "time": " (--minutes reached)",
           "target": " (--target-kid reached)"}.get(outcome, "")
    print(f"trained {args.name}{why}: {summary['steps']} steps ({summary['epochs']} epochs,"
          f" {summary['images_seen']:,} images) in {summary['elapsed']},"
          f" {summary['images_per_s']:,.0f} images/s")
    if score is not None:
        spread = f" ± {score.kid_std:.2g}" if score.kid_std else ""
        print(f"KID {score.kid:.4g}{spread}, FID {score.fid:.4g}"
              f" ({metric_state.get('features', '')}, {score.images} images per set;"
              " not comparable to Inception-based scores)")
    print(f"samples: {run_dir.samples / 'latest.png'}")
    print(f"model:   {exported.weights}\n         {exported.manifest_path}")
    print(f"serve:   a running server: curl -X POST http://127.0.0.1:8000/models/reload; then"
          f" POST /generate {{\"model\": \"{args.name}\"}} (or atelier generate --model"
          f" {args.name})")
