"""Optimisers for a batch of independent images, with no host synchronisation.

Both keep per-image state along the first dimension and can drop images mid-run (`keep`),
so a cancelled job leaves a batch of style jobs without disturbing the others.

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
ignores), so a step can also be captured in a CUDA graph. The step size is fixed (lr, and
min(1, 1/|g|₁)·lr on the first step, as `torch.optim.LBFGS` without line search does).

Each image of the batch has its own history and scaling gamma: batching jobs changes no result.
"""

from __future__ import annotations

import torch

CURVATURE_EPS = 1e-10
DESCENT_TOLERANCE = 1e-9


class BatchedLBFGS:
    def __init__(self, x: torch.Tensor, history: int = 100, lr: float = 1.0,
                 dtype: torch.dtype = torch.float32) -> None:
        batch = x.shape[0]
        n = x[0].numel()
        self.m = history
        self.lr = lr
        self.steps = 0
        device, f64 = x.device, torch.float64
        self.S = torch.zeros(batch, history, n, device=device, dtype=dtype)
        self.Y = torch.zeros(batch, history, n, device=device, dtype=dtype)
        self.SY = torch.zeros(batch, history, history, device=device, dtype=f64)  # s_i · y_j
        self.YY = torch.zeros(batch, history, history, device=device, dtype=f64)  # y_i · y_j
        self.gamma = torch.ones(batch, device=device, dtype=f64)
        self.prev_s = torch.zeros(batch, n, device=device, dtype=dtype)
        self.prev_g = torch.zeros(batch, n, device=device, dtype=dtype)
        # Chronological order of the ring is a rotation known from the host-side step count;
        # all rotations live on the device so that picking one copies nothing.
        ring = torch.arange(history, device=x.device)
        self._rotations = torch.stack([(ring + r) % history for r in range(history)])

    def _remember(self, s: torch.Tensor, g: torch.Tensor) -> None:
        """Store the newest curvature pair (s, y) in the ring slot of this step."""
        slot = (self.steps - 1) % self.m  # a host integer: the step count is known
        y = g - self.prev_g
        ys = (s.double() * y.double()).sum(1)
        valid = ys > CURVATURE_EPS
        keep = valid[:, None].to(s.dtype)
        s, y = s * keep, y * keep
        self.S[:, slot] = s
        self.Y[:, slot] = y
        s_y = torch.bmm(self.Y, s[:, :, None]).squeeze(2).double()  # y_j · s for every slot j
        y_s = torch.bmm(self.S, y[:, :, None]).squeeze(2).double()  # s_i · y
        y_y = torch.bmm(self.Y, y[:, :, None]).squeeze(2).double()
        self.SY[:, slot, :] = s_y
        self.SY[:, :, slot] = y_s
        self.YY[:, slot, :] = y_y
        self.YY[:, :, slot] = y_y
        yy = (y.double() * y.double()).sum(1)
        self.gamma = torch.where(valid, ys / yy.clamp_min(1e-30), self.gamma)

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        """-H g in the compact form, slots taken in chronological order."""
        shift = self.steps % self.m if self.steps >= self.m else 0  # oldest slot first
        order = self._rotations[shift]
        inverse = self._rotations[(-shift) % self.m]
        gamma = self.gamma[:, None]
        sg = torch.bmm(self.S, g[:, :, None]).squeeze(2).double()[:, order]
        yg = torch.bmm(self.Y, g[:, :, None]).squeeze(2).double()[:, order]
        sy = self.SY[:, order][:, :, order]
        yy = self.YY[:, order][:, :, order]
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
        p1, p2 = p1[:, inverse].to(dtype), (gamma * p2)[:, inverse].to(dtype)
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
        if self.steps == 0:
            direction = -g
            size = (1.0 / g.abs().sum(1).clamp_min(1e-30)).clamp(max=1.0) * self.lr
        else:
            self._remember(self.prev_s, g)
            direction = self._direction(g)
            # As torch.optim.LBFGS: no step along a direction that is not a descent
            # direction (rounding can make one); the next pair is then rejected (s = 0).
            descent = (g * direction).sum(1) < -DESCENT_TOLERANCE
            size = descent.to(self.S.dtype) * self.lr
        step = size[:, None] * direction
        x.add_(step.reshape(x.shape).to(x.dtype))
        self.prev_s.copy_(step)
        self.prev_g.copy_(g)
        self.steps += 1

    def keep(self, rows: torch.Tensor) -> None:
        """Continue with only these images (indices into the current batch)."""
        self.S, self.Y = self.S[rows], self.Y[rows]
        self.SY, self.YY = self.SY[rows], self.YY[rows]
        self.gamma = self.gamma[rows]
        self.prev_s, self.prev_g = self.prev_s[rows], self.prev_g[rows]


class BatchedAdam:
    """Adam (Kingma & Ba), element-wise like `torch.optim.Adam`, with a bounds clamp."""

    def __init__(self, x: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = torch.zeros_like(x)
        self.v = torch.zeros_like(x)
        self.steps = 0

    @torch.no_grad()
    def step(self, x: torch.Tensor, grad: torch.Tensor,
             bounds: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        self.steps += 1
        b1, b2 = self.betas
        self.m.mul_(b1).add_(grad, alpha=1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.m / (1 - b1**self.steps)
        v_hat = self.v / (1 - b2**self.steps)
        x.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))
        if bounds is not None:
            x.clamp_(bounds[0], bounds[1])

    def keep(self, rows: torch.Tensor) -> None:
        self.m, self.v = self.m[rows], self.v[rows]
