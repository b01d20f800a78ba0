"""What the first style job of a shape pays, phase by phase, in-process on one device.

Each variant runs in a fresh process (so each sees a cold start) and paints four jobs
through the engine: shape A (first of its shape), shape A again, shape B (a new shape in a
warm process) and B again: A first - A again is what a process's first job pays, B first -
B again what a new shape pays once the process is warm.
Every phase is timed with the device synchronised before and after it:

  decode                 the uploads (JPEG) decoded and resized as the service does
  prepare                both images to the device in network space
  content forward        the content target (relu4_2), no grad
  style Gram forward     the style targets (Gram matrices), no grad, cuDNN benchmark off
                         (as the engine computes them)
  join                   StyleBatch.join: targets again (now warm), the start image
  allocation             the optimiser state (L-BFGS history: 2 x history x pixels floats)
  step 1 .. step 10      one optimisation step each (forward, backward, L-BFGS update;
                         step 2 is the first with a triangular solve)
  rest                   the remaining steps and the final image, one synchronisation

Variants (`--variants`):
  benchmark       cudnn.benchmark on, as the server sets it (DeviceRuntime.load)
  no-benchmark    cudnn.benchmark off
  worker-thread   as `benchmark`, the jobs run on a new thread, as the server's pool workers
  eager-loading   as `benchmark`, with CUDA_MODULE_LOADING=EAGER (every kernel loaded when
                  the context is created, instead of on first use)
  solve           no job: the first and second torch.linalg.solve_triangular of the L-BFGS
                  shapes in a fresh process, after the context exists
On the CPU the cuDNN and CUDA variants say nothing and are skipped.

    python bench/profile_first_job.py                          # CPU: 96 px, 20 steps
    python bench/profile_first_job.py --size 512 --steps 100 --device cuda:0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.engines.optim import BatchedAdam, BatchedLBFGS
from app.engines.style import (
    InputSpace,
    StyleBatch,
    StyleJob,
    StyleOptions,
    batch_key,
    features,
    gram,
    input_space,
)
from app.nets.loading import load_vgg
from app.nets.vgg import VGG19Features
from app.settings import Settings
from bench.serve_stylize import IMAGES, decode, jpeg, shaped_upload

VARIANTS = ("benchmark", "no-benchmark", "worker-thread", "eager-loading", "solve")
CUDA_ONLY = {"no-benchmark", "eager-loading"}


class Clock:
    """Laps with the device synchronised at each one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: dict[str, float] = {}
        self._sync()
        self._last = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self, name: str) -> float:
        self._sync()
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self._last = now
        return self.laps[name]


class TimedBatch(StyleBatch):
    """A StyleBatch that also times the allocation of its optimiser state."""

    allocation_s = 0.0

    def _new_optimizer(self, x: torch.Tensor) -> BatchedLBFGS | BatchedAdam:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        optimizer = super()._new_optimizer(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.allocation_s += time.perf_counter() - started
        return optimizer


def profile_job(vgg: VGG19Features, space: InputSpace, options: StyleOptions, upload: bytes,
                style_upload: bytes, device: torch.device, settings: Settings) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock(device)
    content = decode(upload, options.size, settings)
    style = decode(style_upload, round(options.size * options.style_scale), settings)
    clock.lap("decode")
    x_content = space.preprocess(content, device)
    x_style = space.preprocess(style, device)
    clock.lap("prepare (to device)")
    with torch.no_grad():
        features(vgg, x_content, [options.content_layer], options)
    clock.lap("content forward")
    with torch.no_grad(), torch.backends.cudnn.flags(
            enabled=torch.backends.cudnn.enabled, benchmark=False,
            deterministic=torch.backends.cudnn.deterministic,
            allow_tf32=torch.backends.cudnn.allow_tf32):
        feats = features(vgg, x_style, options.style_layers, options)
        for layer in options.style_layers:
            gram(feats[layer])
    clock.lap("style Gram forward")
    batch = TimedBatch(vgg, batch_key(options, content.shape), options, device=device,
                       space=space)
    batch.join(StyleJob(content, [style], options))
    clock.lap("join (targets again, start image)")
    clock.laps["join (targets again, start image)"] -= batch.allocation_s
    clock.laps["allocation (optimizer state)"] = batch.allocation_s
    for step in range(1, 11):
        if len(batch):
            batch.step()
            clock.lap(f"step {step}")
    while len(batch):
        batch.step()
        clock.lap(f"steps 11-{options.steps}, final image")
    laps = clock.laps
    return {"shape": [int(content.shape[0]), int(content.shape[1])], "phases": laps,
            "total": sum(laps.values()),
            "peak_mb": torch.cuda.max_memory_allocated(device) / 2**20
            if device.type == "cuda" else None}


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this (fresh) process."""
    spawned = float(os.environ.get("PROFILE_SPAWNED", time.time()))
    out: dict[str, Any] = {"variant": args.variant, "start_to_main": time.time() - spawned}
    settings = Settings()
    device = torch.device(args.device)
    if device.type == "cpu" and settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)  # as the server's CPU workers
    out["threads"] = torch.get_num_threads()
    out["device_name"] = f"{platform.processor() or platform.machine()} CPU"
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.empty(1, device=device)
        torch.cuda.synchronize(device)
        torch.backends.cudnn.benchmark = args.variant != "no-benchmark"
        out["device_name"] = torch.cuda.get_device_name(device)
    out["context_s"] = time.perf_counter() - started
    out["module_loading"] = os.environ.get("CUDA_MODULE_LOADING", "(unset)")
    if args.variant == "solve":
        out["solve"] = solve_timings(device, args.history)
        return out
    started = time.perf_counter()
    entry = Catalog(settings.catalog_dir, settings.model_dir).entry(settings.style_model)
    assert entry is not None and entry.status.value == "available", "atelier models pull"
    vgg = load_vgg(entry.manifest.architecture, entry.weights, str(device))
    space = input_space(entry.manifest.architecture)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    out["load_s"] = time.perf_counter() - started
    options = StyleOptions(steps=args.steps, size=args.size, content_weight=1.0,
                           style_weight=args.style_weight, tv_weight=args.tv_weight,
                           progress_every=settings.progress_every,
                           lbfgs_history=args.history)
    with Image.open(IMAGES / "starry_night.jpg") as image:
        style = jpeg(image.convert("RGB"), args.size)
    shape_a, shape_b = args.shapes.split(",")[:2]
    uploads = [("A first", shaped_upload("tubingen.jpg", shape_a, args.size)),
               ("A again", shaped_upload("tubingen.jpg", shape_a, args.size)),
               ("B first", shaped_upload("tubingen.jpg", shape_b, args.size)),
               ("B again", shaped_upload("tubingen.jpg", shape_b, args.size))]
    jobs: list[dict[str, Any]] = []

    def run_all() -> None:
        for label, upload in uploads:
            jobs.append({"label": label, **profile_job(vgg, space, options, upload, style,
                                                       device, settings)})

    if args.variant == "worker-thread":
        errors: list[BaseException] = []

        def target() -> None:
            try:
                run_all()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="profile-worker")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
    else:
        run_all()
    out["jobs"] = jobs
    out["module_loading"] = os.environ.get("CUDA_MODULE_LOADING", "(unset)")
    return out


def solve_timings(device: torch.device, history: int) -> dict[str, float]:
    """First and second calls of the L-BFGS direction's triangular solves (fp64, [1, m, m])."""
    upper = torch.eye(history, dtype=torch.float64, device=device)[None] * 2
    rhs = torch.ones(1, history, 1, dtype=torch.float64, device=device)
    timings: dict[str, float] = {}
    for label, is_upper in (("first solve_triangular (upper)", True),
                            ("first solve_triangular (lower)", False),
                            ("second solve_triangular (upper)", True)):
        matrix = upper if is_upper else upper.transpose(1, 2)
        clock = Clock(device)
        torch.linalg.solve_triangular(matrix, rhs, upper=is_upper)
        timings[label] = clock.lap(label)
    clock = Clock(device)
    torch.bmm(upper, rhs)
    timings["first fp64 bmm"] = clock.lap("bmm")
    return timings


def excess(first: dict[str, Any], again: dict[str, Any], count: int = 3) -> str:
    """The phases where `first` took longest beyond `again`."""
    deltas = sorted(((t - again["phases"].get(p, 0.0), p) for p, t in first["phases"].items()),
                    reverse=True)
    return ", ".join(f"{p} {ms(d)}" for d, p in deltas[:count])


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def print_header(result: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"# {platform.node()}, {result.get('device_name', args.device)}; torch "
          f"{torch.__version__}; {args.size} px, {args.steps} steps, lbfgs history "
          f"{args.history}, style weight {args.style_weight:g}, tv {args.tv_weight:g}; shapes "
          f"{args.shapes}; times in ms, device synchronised around every phase", flush=True)


def print_variant(result: dict[str, Any], device: torch.device) -> str | None:
    """One variant's table; returns its row of the overview (None: it has none)."""
    variant = result["variant"]
    if "error" in result:
        print(f"\n#### {variant}: failed\n```\n{result['error']}\n```", flush=True)
        return None
    cudnn = "" if device.type == "cuda" else " (cuDNN n/a on the CPU)"
    print(f"\n#### {variant}{cudnn}: process start -> main {ms(result['start_to_main'])}, "
          f"CUDA context {ms(result['context_s'])}, load VGG {ms(result.get('load_s'))}; "
          f"CUDA_MODULE_LOADING={result['module_loading']}, {result['threads']} threads")
    if "solve" in result:
        print("| call | ms |\n|---|---|")
        for label, seconds in result["solve"].items():
            print(f"| {label} | {ms(seconds)} |")
        return None
    jobs = result["jobs"]
    heads = [f"{j['label']} ({j['shape'][1]}x{j['shape'][0]})" for j in jobs]
    print(f"| phase | {' | '.join(heads)} | A first - A again | B first - B again |")
    print("|---|" + "---|" * (len(jobs) + 2))
    phases = list(dict.fromkeys(p for j in jobs for p in j["phases"]))
    for phase in [*phases, "total"]:
        values = [j["total"] if phase == "total" else j["phases"].get(phase) for j in jobs]
        deltas = [ms(values[i] - values[i + 1]) if len(values) > i + 1 and values[i]
                  is not None and values[i + 1] is not None else "-" for i in (0, 2)]
        print(f"| {phase} | {' | '.join(ms(v) for v in values)} | {' | '.join(deltas)} |")
    if device.type == "cuda":
        peaks = " | ".join(f"{j['peak_mb']:.0f}" for j in jobs)
        print(f"| peak MB | {peaks} | - | - |")
    sys.stdout.flush()
    if len(jobs) < 4:
        return None
    totals = [j["total"] for j in jobs]
    return (f"| {variant} | {' | '.join(ms(t) for t in totals)} | {totals[0] / totals[1]:.2f} "
            f"| {totals[2] / totals[3]:.2f} | {excess(jobs[0], jobs[1])} "
            f"| {excess(jobs[2], jobs[3])} |")


def print_overview(rows: list[str]) -> None:
    if not rows:
        return
    print("\n#### first job of a shape against the second (totals, ms)")
    print("| variant | A first | A again | B first | B again | A first / again "
          "| B first / again | A first - again: largest phases | B first - again: largest "
          "phases |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="", help="cpu, cuda:0 (default: ATELIER_DEVICES)")
    parser.add_argument("--size", type=int, default=0, help="0: 512 on CUDA, 96 on the CPU")
    parser.add_argument("--steps", type=int, default=0, help="0: 100 on CUDA, 20 on the CPU")
    parser.add_argument("--history", type=int, default=100, help="L-BFGS history")
    parser.add_argument("--style-weight", type=float, default=1e3)
    parser.add_argument("--tv-weight", type=float, default=0.0)
    parser.add_argument("--shapes", default="4:3,16:9", help="shapes A and B (w:h)")
    parser.add_argument("--variants", default="", help=f"any of {','.join(VARIANTS)} "
                        "(default: all that apply to the device)")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per variant")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child's own
    parser.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device or Settings().device_list()[0])
    args.device = str(device)
    args.size = args.size or (512 if device.type == "cuda" else 96)
    args.steps = args.steps or (100 if device.type == "cuda" else 20)
    if args.variant:
        assert args.json_out is not None
        args.json_out.write_text(json.dumps(child(args)))
        return
    wanted = [v.strip() for v in (args.variants or ",".join(VARIANTS)).split(",") if v.strip()]
    unknown = set(wanted) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if device.type != "cuda":
        skipped = [v for v in wanted if v in CUDA_ONLY]
        wanted = [v for v in wanted if v not in CUDA_ONLY]
        if skipped:
            print(f"(skipped on {device}: {', '.join(skipped)}: CUDA only)")
    results: list[dict[str, Any]] = []
    rows: list[str] = []
    for variant in wanted:  # each printed as it ends: a timeout keeps what is done
        results.append(run_variant(variant, args))
        if len(results) == 1:
            print_header(results[0], args)
        if (row := print_variant(results[-1], device)) is not None:
            rows.append(row)
    print_overview(rows)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if any("error" in r for r in results):
        sys.exit(1)


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="atelier-profile-") as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, "PROFILE_SPAWNED": repr(time.time())}
        if variant == "eager-loading":
            env["CUDA_MODULE_LOADING"] = "EAGER"
        command = [sys.executable, __file__, "--variant", variant, "--json-out", str(out),
                   "--device", args.device, "--size", str(args.size), "--steps",
                   str(args.steps), "--history", str(args.history), "--style-weight",
                   str(args.style_weight), "--tv-weight", str(args.tv_weight), "--shapes",
                   args.shapes]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"variant": variant, "error": f"timed out after {args.timeout:.0f} s"}
        if done.returncode != 0 or not out.exists():
            return {"variant": variant,
                    "error": f"exit {done.returncode}\n{done.stderr[-2000:]}"}
        result: dict[str, Any] = json.loads(out.read_text())
        return result


if __name__ == "__main__":
    main()
