"""GAN training throughput: images/s of `Trainer.train_step` (D step, G step, EMA update)
on random data already on the device, as `atelier train` runs it.

    python bench/train.py --device cpu --threads 2 --batch-size 64 --steps 5      # CPU here
    python bench/train.py --device cuda --steps 300 --variants bf16,fp32,bf16+compile

Images/s counts real images consumed per second (batch size x steps / seconds), timed from a
device sync after `--warmup` steps to a device sync after `--steps` more; data decoding,
sample grids, evaluations and checkpoints are not in it (they are not in the training
progress bar's figure either). `--target` reports whether the best variant meets it.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.training.trainer import TrainConfig, Trainer


def measure(config: TrainConfig, device: str, steps: int, warmup: int,
            compile: bool) -> float:
    images = torch.randint(0, 256, (config.batch_size * 8, 3, config.size, config.size),
                           dtype=torch.uint8)
    trainer = Trainer(config, images, device, compile=compile)
    for _ in range(warmup):
        trainer.train_step()
    trainer.flush()  # a device sync
    started = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    rows = trainer.flush()
    seconds = time.perf_counter() - started
    assert all(torch.isfinite(torch.tensor(r[1:])).all() for r in rows)
    return steps * config.batch_size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, choices=(64, 128))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--ndf", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--variants", default="fp32",
                        help="comma-separated precision[+compile]: fp32, bf16, bf16+compile")
    parser.add_argument("--target", type=float, help="images/s the best variant must reach")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        name = f"{platform.processor() or platform.machine()} cpu"
    print(f"# {name}; torch {torch.__version__}; {args.size} px, batch {args.batch_size},"
          f" ngf {args.ngf}, ndf {args.ndf}, threads {torch.get_num_threads()},"
          f" {args.steps} timed steps after {args.warmup}")
    print("| variant | images/s | steps/s |")
    print("|---|---|---|")
    best = 0.0
    for variant in args.variants.split(","):
        precision, _, extra = variant.partition("+")
        config = TrainConfig(size=args.size, batch_size=args.batch_size, ngf=args.ngf,
                             ndf=args.ndf, precision=precision)
        try:
            rate = measure(config, args.device, args.steps, args.warmup, extra == "compile")
        except Exception as exc:  # one variant failing (torch.compile) leaves the others
            print(f"| {variant} | failed: {type(exc).__name__}: {exc} | |", flush=True)
            continue
        best = max(best, rate)
        print(f"| {variant} | {rate:,.0f} | {rate / args.batch_size:,.2f} |", flush=True)
    if args.target is not None:
        verdict = "met" if best >= args.target else "NOT met"
        print(f"\nbest {best:,.0f} images/s; target {args.target:,.0f}: {verdict}")


if __name__ == "__main__":
    main()
