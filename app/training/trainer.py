"""One GAN training step at a time, and all the state a run needs to resume exactly.

The loop of Goodfellow et al. (2014), min_G max_D E[log D(x)] + E[log(1 - D(G(z)))]:

* D step: real images against G(z) (detached), D's loss -log D(x) - log(1 - D(G(z))),
  written on logits as softplus(-D(x)) + softplus(D(G(z))) (stable in any precision);
* G step, D fixed (its parameters stop taking gradients): the non-saturating loss
  -log D(G(z)) = softplus(-D(G(z))) by default, or the minimax form log(1 - D(G(z))) =
  -softplus(D(G(z))) (its gradient vanishes while D wins, which is why it is not the
  default); the same G(z) as the D step (one generator pass per step, as the DCGAN paper);
* then an exponential moving average of G's weights, the network that gets served.

Randomness is all seeded and all restorable: the networks' initialisation comes from the
seed; the data order of epoch e is a permutation drawn from (seed, e); the noise and the
flips come from two generators on the device whose states the checkpoint keeps. So on the
CPU a resumed run computes bit for bit what the uninterrupted run computes.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from app.engines.gan import to_uint8_images
from app.training.nets import Discriminator, build

Loss = Literal["non-saturating", "minimax"]
Precision = Literal["fp32", "bf16"]
FORMAT = 1  # of the checkpoint dictionary
SAMPLE_GRID = 64  # images in a sample grid (8 x 8)


@dataclass(frozen=True)
class TrainConfig:
    """What decides a run's trajectory: a run resumes only with the same values."""

    size: int = 64
    batch_size: int = 128
    nz: int = 100
    ngf: int = 64
    ndf: int = 64
    loss: Loss = "non-saturating"
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ema_decay: float = 0.999
    flip: bool = True
    seed: int = 0
    precision: Precision = "fp32"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


class Trainer:
    """G, D, their optimisers, the EMA of G, the data on the device, and the step count."""

    def __init__(self, config: TrainConfig, images: torch.Tensor,
                 device: torch.device | str = "cpu", *, compile: bool = False) -> None:
        size = config.size
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"images must be uint8 [N, 3, {size}, {size}]")
        if len(images) < config.batch_size:
            raise ValueError(f"{len(images)} images are fewer than one batch "
                             f"({config.batch_size})")
        self.config = config
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.images = images.to(self.device)
        g, d = build(size, config.nz, config.ngf, config.ndf, config.seed)
        # channels_last everywhere: cuDNN's fast bf16 kernels want it, and oneDNN's CPU
        # convolutions ran 6x faster with it (64 px, batch 64, 2 threads: 0.52 s vs 3.2 s).
        self.g = g.to(self.device).to(memory_format=torch.channels_last)
        self.d: Discriminator = d.to(self.device).to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.g).requires_grad_(False).eval()
        betas = (config.beta1, config.beta2)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=config.lr, betas=betas)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels
        self.noise_rng = torch.Generator(self.device).manual_seed(_seed(config.seed, 1))
        self.flip_rng = torch.Generator(self.device).manual_seed(_seed(config.seed, 2))
        self.fixed_noise = torch.randn(SAMPLE_GRID, config.nz,
                                       generator=torch.Generator().manual_seed(_seed(
                                           config.seed, 3)))
        self.step = 0
        self.seconds = 0.0  # training time of earlier sessions, for the record
        self.history: list[tuple[int, float, float]] = []  # (step, D loss, G loss)
        self.evals: list[dict[str, Any]] = []
        self._pending: list[torch.Tensor] = []
        self._order: tuple[int, torch.Tensor] | None = None
        self._g_forward: nn.Module = self.g
        self._d_forward: nn.Module = self.d
        if compile:
            self._g_forward = torch.compile(self.g)  # type: ignore[assignment]
            self._d_forward = torch.compile(self.d)  # type: ignore[assignment]
        self._ema_pairs: tuple[list[torch.Tensor], ...] = (
            list(self.ema.parameters()), list(self.g.parameters()),
            list(self.ema.buffers()), list(self.g.buffers()))

    # ---- one step -----------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        return len(self.images) // self.config.batch_size

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    @property
    def images_seen(self) -> int:
        return self.step * self.config.batch_size

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _real_batch(self) -> torch.Tensor:
        """The step's real images in [-1, 1]: epoch order from (seed, epoch), random flips."""
        config = self.config
        epoch, position = divmod(self.step, self.steps_per_epoch)
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(len(self.images),
                                   generator=torch.Generator().manual_seed(
                                       _seed(config.seed, 4, epoch)))
            self._order = (epoch, order.to(self.device))
        batch = config.batch_size
        index = self._order[1][position * batch:(position + 1) * batch]
        real = self.images[index].float().div_(127.5).sub_(1.0)
        if config.flip:
            flip = torch.rand(batch, generator=self.flip_rng, device=self.device) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(3), real)
        return real.contiguous(memory_format=torch.channels_last)

    def train_step(self) -> None:
        """One D step and one G step on the next batch, then the EMA update."""
        config = self.config
        real = self._real_batch()
        z = torch.randn(config.batch_size, config.nz, 1, 1, generator=self.noise_rng,
                        device=self.device)
        with self._autocast():
            fake = self._g_forward(z)
            d_real = self._d_forward(real).float()
            d_fake = self._d_forward(fake.detach()).float()
        loss_d = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        self.opt_d.zero_grad(set_to_none=True)
        torch.autograd.backward(loss_d)
        self.opt_d.step()

        self.d.requires_grad_(False)  # D fixed: no weight gradients, only the way back to G
        try:
            with self._autocast():
                logits = self._d_forward(fake).float()
            if config.loss == "non-saturating":
                loss_g = F.softplus(-logits).mean()
            else:
                loss_g = -F.softplus(logits).mean()
            self.opt_g.zero_grad(set_to_none=True)
            torch.autograd.backward(loss_g)
            self.opt_g.step()
        finally:
            self.d.requires_grad_(True)
        self._update_ema()
        self.step += 1
        self._pending.append(torch.stack([loss_d.detach(), loss_g.detach()]))

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Warm-up (as in TF's ExponentialMovingAverage with num_updates): the first EMAs
        # follow G closely instead of averaging in its random initialisation for ages.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema_params, params, ema_buffers, buffers = self._ema_pairs
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        torch._foreach_copy_(ema_buffers, buffers)

    def flush(self) -> list[tuple[int, float, float]]:
        """The losses of the steps since the last flush, as numbers (one device sync)."""
        if not self._pending:
            return []
        values: list[list[float]] = torch.stack(self._pending).tolist()
        first = self.step - len(values) + 1
        rows = [(first + i, d, g) for i, (d, g) in enumerate(values)]
        self.history.extend(rows)
        self._pending.clear()
        return rows

    # ---- the served network -------------------------------------------------------------

    @torch.no_grad()
    def served_generator(self, samples: int = 1024, batch: int = 256) -> nn.Module:
        """A copy of the EMA generator, eval mode, its batch-norm statistics measured afresh
        for its own weights (G's running statistics belong to G's weights, not the
        average's) on `samples` latents of a fixed seed. This is what is sampled, scored and
        exported."""
        net = copy.deepcopy(self.ema).to(memory_format=torch.contiguous_format)
        for module in net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a cumulative average over the passes below
        net.train()
        rng = torch.Generator(self.device).manual_seed(_seed(self.config.seed, 5))
        for start in range(0, samples, batch):
            count = min(batch, samples - start)
            net(torch.randn(count, self.config.nz, 1, 1, generator=rng, device=self.device))
        net.eval()
        return net

    @torch.no_grad()
    def generate(self, net: nn.Module, count: int, seed: int, batch: int = 256) -> torch.Tensor:
        """uint8 [count, 3, S, S] images of `net` from latents of `seed`, on the CPU."""
        rng = torch.Generator(self.device).manual_seed(seed)
        out = []
        for start in range(0, count, batch):
            z = torch.randn(min(batch, count - start), self.config.nz, 1, 1, generator=rng,
                            device=self.device)
            out.append(to_uint8_images(net(z)).permute(0, 3, 1, 2))
        return torch.cat(out)

    @torch.no_grad()
    def sample_grid(self, net: nn.Module) -> torch.Tensor:
        """uint8 [64, S, S, 3] of the fixed latents: the same faces, step after step."""
        return to_uint8_images(net(self.fixed_noise.to(self.device)))

    # ---- checkpoints --------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        rng: dict[str, Any] = {
            "device": self.device.type, "noise": self.noise_rng.get_state(),
            "flip": self.flip_rng.get_state(), "torch": torch.get_rng_state(),
        }
        if self.cuda:
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "format": FORMAT, "config": self.config.as_dict(), "step": self.step,
            "seconds": self.seconds, "g": self.g.state_dict(), "d": self.d.state_dict(),
            "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(), "rng": rng, "fixed_noise": self.fixed_noise,
            "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3),
            "evals": list(self.evals),
        }

    def load_state_dict(self, state: dict[str, Any]) -> list[str]:
        """Restore a checkpoint of this configuration; returns warnings (a resume that
        cannot be exact)."""
        if state.get("format") != FORMAT:
            raise ValueError(f"unknown checkpoint format {state.get('format')!r}")
        if state["config"] != self.config.as_dict():
            raise ValueError("the checkpoint was made with other settings")
        warnings = []
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.step = int(state["step"])
        self.seconds = float(state["seconds"])
        self.fixed_noise = state["fixed_noise"].cpu()
        self.history = [(int(s), d, g) for s, d, g in state["history"].tolist()]
        self.evals = list(state["evals"])
        self._pending.clear()
        self._order = None
        rng = state["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        if rng["device"] == self.device.type:
            self.noise_rng.set_state(rng["noise"].cpu())
            self.flip_rng.set_state(rng["flip"].cpu())
            if self.cuda and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        else:  # the noise streams of another device type cannot continue here
            self.noise_rng.manual_seed(_seed(self.config.seed, 1, self.step))
            self.flip_rng.manual_seed(_seed(self.config.seed, 2, self.step))
            warnings.append(f"the checkpoint was made on {rng['device']}, this run is on "
                            f"{self.device.type}: it continues, but not bit for bit")
        return warnings


@contextlib.contextmanager
def threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads for a block (None: leave as is)."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
