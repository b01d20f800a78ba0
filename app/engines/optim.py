"""Optimisers for a batch of independent images, with no host synchronisation.

Both keep per-image state along the first dimension and can drop images mid-run (`keep`),
so a cancelled job leaves a batch of style jobs without disturbing the others.

A step reads nothing from the host: each row's step count lives on the device (an int64
tensor stepped there), and every rule that depends on it (ring slots, the first-step rule,
Adam's bias corrections) is a tensor expression over it. So a step never makes the host wait
for the device, runs the same kernels whatever the rows' step counts are, and updates its
state in place: it can be captured once in a CUDA graph and replayed (StyleBatch does).
Membership changes (`add`, `keep`) reallocate the state and may synchronise.

L-BFGS:

`torch.optim.LBFGS` walks its history in Python, calls `.item()` and branches on tensor
values, costing hundreds of device round trips per step at history 100. This version keeps
the history on the device in fixed-size ring buffers and applies the inverse-Hessian
estimate in the compact form of Byrd, Nocedal & Schnabel (1994):

    H g = gamma g + [S  gamma Y] W [Sᵀg ; gamma Yᵀg],
    W = [[R⁻ᵀ(D + gamma YᵀY)R⁻¹, -R⁻ᵀ], [-R⁻¹, 0]],

with R the upper triangle of SᵀY and D its diagonal. Every step is a handful of batched
matrix products and one small triangular solve of fixed shape: no `.item()`, no data-dependent
branch (a curvature pair that fails the test yᵀs > ε is stored as zeros, which the algebra
ignores). The step size is fixed (lr, and min(1, 1/|g|₁)·lr on a row's first step, as
`torch.optim.LBFGS` without line search does); rows on their first step are picked by a
mask, so a batch whose rows joined at different steps takes the same step as any other.

Each image of the batch has its own history, scaling gamma and step count, so images can
join a running batch (`add`) and leave it (`keep`) at any step: continuous batching, as LLM
servers do with sequences. A row's ring position follows its own step count; batching jobs
changes no result beyond floating-point rounding.
"""

from __future__ import annotations

import torch

CURVATURE_EPS = 1e-10
DESCENT_TOLERANCE = 1e-9


class BatchedLBFGS:
    def __init__(self, x: torch.Tensor, history: int = 100, lr: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> None:
        self.m = history
        self.lr = lr
        self.dtype = dtype
        device, n = x.device, x[0].numel()
        self.S = torch.zeros(0, history, n, device=device, dtype=dtype)
        self.Y = torch.zeros(0, history, n, device=device, dtype=dtype)
        self.SY = torch.zeros(0, history, history, device=device, dtype=torch.float64)
        self.YY = torch.zeros(0, history, history, device=device, dtype=torch.float64)
        self.gamma = torch.ones(0, device=device, dtype=torch.float64)
        self.prev_s = torch.zeros(0, n, device=device, dtype=dtype)
        self.prev_g = torch.zeros(0, n, device=device, dtype=dtype)
        self.step_counts = torch.zeros(0, device=device, dtype=torch.long)  # per row
        self._rows = torch.arange(0, device=device)
        # Chronological order of a ring is a rotation known from its row's step count;
        # all rotations live on the device so that picking them copies nothing.
        ring = torch.arange(history, device=device)
        self._rotations = torch.stack([(ring + r) % history for r in range(history)])
        self.add(x.shape[0])

    @property
    def steps(self) -> int:
        """The step count when every row has the same one (a batch that started together).
        Reading it waits for the device: for tests and tools, not for the step loop."""
        return int(self.step_counts.max()) if len(self.step_counts) else 0

    @steps.setter
    def steps(self, value: int) -> None:
        self.step_counts.fill_(value)

    def add(self, rows: int) -> None:
        """Append `rows` fresh images (no history) at the end of the batch."""
        def grow(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            extra = torch.full((rows, *t.shape[1:]), fill, device=t.device, dtype=t.dtype)
            return torch.cat([t, extra])

        self.S, self.Y = grow(self.S), grow(self.Y)
        self.SY, self.YY = grow(self.SY), grow(self.YY)
        self.gamma = grow(self.gamma, 1.0)
        self.prev_s, self.prev_g = grow(self.prev_s), grow(self.prev_g)
        self.step_counts = grow(self.step_counts)
        self._rows = torch.arange(len(self.step_counts), device=self.S.device)

    def _slots(self, offset: int) -> torch.Tensor:
        return (self.step_counts + offset) % self.m  # a remainder: -1 wraps to m - 1

    def _remember(self, s: torch.Tensor, g: torch.Tensor) -> None:
        """Store each row's newest curvature pair (s, y) in the ring slot of its last step.

        A row that has not stepped yet has s = 0: its pair is rejected, nothing changes."""
        rows = self._rows
        slot = self._slots(-1)
        y = g - self.prev_g
        ys = (s.double() * y.double()).sum(1)
        valid = ys > CURVATURE_EPS
        keep = valid[:, None].to(s.dtype)
        s, y = s * keep, y * keep
        self.S[rows, slot] = s
        self.Y[rows, slot] = y
        s_y = torch.bmm(self.Y, s[:, :, None]).squeeze(2).double()  # y_j · s for every slot j
        y_s = torch.bmm(self.S, y[:, :, None]).squeeze(2).double()  # s_i · y
        y_y = torch.bmm(self.Y, y[:, :, None]).squeeze(2).double()
        self.SY[rows, slot, :] = s_y
        self.SY[rows, :, slot] = y_s
        self.YY[rows, slot, :] = y_y
        self.YY[rows, :, slot] = y_y
        yy = (y.double() * y.double()).sum(1)
        # In place, as every state update: a captured step keeps pointing at this tensor.
        self.gamma.copy_(torch.where(valid, ys / yy.clamp_min(1e-30), self.gamma))

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g in the compact form, each row's slots taken in its chronological order."""
        m = self.m
        counts = self.step_counts  # oldest slot first: 0 until the ring wraps around
        shift = torch.where(counts >= m, counts % m, torch.zeros_like(counts))
        order = self._rotations[shift]  # [B, m]
        inverse = self._rotations[(-shift) % m]
        square = (order[:, :, None].expand(-1, -1, m), order[:, None, :].expand(-1, m, -1))
        gamma = self.gamma[:, None]
        sg = torch.bmm(self.S, g[:, :, None]).squeeze(2).double().gather(1, order)
        yg = torch.bmm(self.Y, g[:, :, None]).squeeze(2).double().gather(1, order)
        sy = self.SY.gather(1, square[0]).gather(2, square[1])
        yy = self.YY.gather(1, square[0]).gather(2, square[1])
        diag = torch.diagonal(sy, dim1=1, dim2=2)
        # Empty or rejected slots hold zeros: a unit diagonal keeps R invertible and leaves
        # them decoupled, and their zero columns add nothing to the result.
        empty = (diag == 0).double()
        upper = torch.triu(sy) + torch.diag_embed(empty)
        p2 = torch.linalg.solve_triangular(upper, sg[:, :, None], upper=True).squeeze(2)
        inner = torch.diag_embed(diag) + gamma[:, :, None] * yy
        p1 = torch.linalg.solve_triangular(
            upper.transpose(1, 2),
            (torch.bmm(inner, p2[:, :, None]).squeeze(2) - gamma * yg)[:, :, None],
            upper=False,
        ).squeeze(2)
        # H g = gamma g + S p1 - gamma Y p2  (p1, p2 back in ring order)
        dtype = self.S.dtype
        p1 = p1.gather(1, inverse).to(dtype)
        p2 = (gamma * p2).gather(1, inverse).to(dtype)
        hg = (gamma.to(dtype) * g
              + torch.bmm(p1[:, None, :], self.S).squeeze(1)
              - torch.bmm(p2[:, None, :], self.Y).squeeze(1))
        return -hg

    @torch.no_grad()
    def step(self, x: torch.Tensor, grad: torch.Tensor) -> None:
        """Move x (in place) along the L-BFGS direction computed from its gradient.

        No bounds: clamping the iterate (a projection) breaks the curvature model, and on
        512 px style jobs it made the loss diverge; clamp the final result instead.
        """
        batch = x.shape[0]
        g = grad.reshape(batch, -1).to(self.S.dtype)
        # Rows on their first step go through the same algebra as the others: their
        # previous step is zero, so their pair is rejected and changes nothing, and the
        # mask below replaces their direction. No branch on the step counts: every step
        # launches the same kernels.
        self._remember(self.prev_s, g)
        direction = self._direction(g)
        # As torch.optim.LBFGS: no step along a direction that is not a descent
        # direction (rounding can make one); the next pair is then rejected (s = 0).
        descent = (g * direction).sum(1) < -DESCENT_TOLERANCE
        size = descent.to(self.S.dtype) * self.lr
        # A row's first step: along -g, at min(1, 1/|g|₁)·lr.
        first = self.step_counts == 0
        first_size = (1.0 / g.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0) * self.lr
        direction = torch.where(first[:, None], -g, direction)
        size = torch.where(first, first_size, size)
        step = size[:, None] * direction
        x.add_(step.reshape(x.shape).to(x.dtype))
        self.prev_s.copy_(step)
        self.prev_g.copy_(g)
        self.step_counts.add_(1)

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with only these images (indices into the current batch)."""
        self.S, self.Y = self.S[rows], self.Y[rows]
        self.SY, self.YY = self.SY[rows], self.YY[rows]
        self.gamma = self.gamma[rows]
        self.prev_s, self.prev_g = self.prev_s[rows], self.prev_g[rows]
        self.step_counts = self.step_counts[rows]
        self._rows = torch.arange(len(self.step_counts), device=self.S.device)


class BatchedAdam:
    """Adam (Kingma & Ba), element-wise like `torch.optim.Adam`, with a bounds clamp. Each
    row's bias corrections follow its own step count, so rows can join at any step."""

    def __init__(self, x: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(x[:0])
        self.v = torch.zeros_like(x[:0])
        self.step_counts = torch.zeros(0, device=x.device, dtype=torch.long)  # per row
        self.add(x.shape[0])

    def add(self, rows: int) -> None:
        """Append `rows` fresh images at the end of the batch."""
        extra = torch.zeros((rows, *self.m.shape[1:]), device=self.m.device, dtype=self.m.dtype)
        self.m, self.v = torch.cat([self.m, extra]), torch.cat([self.v, extra])
        self.step_counts = torch.cat([self.step_counts, self.step_counts.new_zeros(rows)])

    @torch.no_grad()
    def step(self, x: torch.Tensor, grad: torch.Tensor,
             bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.step_counts.add_(1)
        b1, b2 = self.betas
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        shape = (-1,) + (1,) * (x.dim() - 1)
        steps = self.step_counts.to(torch.float64).view(shape)
        m_hat = self.m / (1 - b1**steps).to(x.dtype)
        v_hat = self.v / (1 - b2**steps).to(x.dtype)
        x.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
        if bounds is not None:
            x.clamp_(bounds[0], bounds[1])

    def keep(self, rows: torch.Tensor) -> None:
        self.m, self.v = self.m[rows], self.v[rows]
        self.step_counts = self.step_counts[rows]
