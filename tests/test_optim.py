"""The sync-free batched L-BFGS: the same algebra as the textbook two-loop recursion."""

from __future__ import annotations

import pytest
import torch

from app.engines.optim import BatchedLBFGS


def two_loop(pairs: list[tuple[torch.Tensor, torch.Tensor]], g: torch.Tensor,
             gamma: torch.Tensor) -> torch.Tensor:
    """Nocedal & Wright, algorithm 7.4: H g."""
    q, alphas = g.clone(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (y @ s)
        q -= alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas), strict=True):
        beta = (y @ r) / (y @ s)
        r += s * (alpha - beta)
    return r


def spd(n: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=torch.float64)
    return a @ a.T + n * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("pairs", [1, 4, 5, 9])  # below, at and past the ring's wrap-around
def test_compact_form_equals_the_two_loop_recursion(pairs: int) -> None:
    torch.manual_seed(pairs)
    n, m = 30, 5
    a = spd(n)
    xs = [torch.randn(n, dtype=torch.float64) for _ in range(pairs + 1)]
    gs = [a @ x for x in xs]
    opt = BatchedLBFGS(xs[0][None], history=m, dtype=torch.float64)
    for p in range(pairs):
        opt.prev_g, opt.steps = gs[p][None].clone(), p + 1
        opt._remember((xs[p + 1] - xs[p])[None], gs[p + 1][None])
    g = torch.randn(n, dtype=torch.float64)
    window = [(xs[i + 1] - xs[i], gs[i + 1] - gs[i]) for i in range(pairs)][-m:]
    s, y = window[-1]
    expected = -two_loop(window, g, (s @ y) / (y @ y))
    torch.testing.assert_close(opt._direction(g[None])[0], expected, rtol=1e-10, atol=1e-12)


def test_follows_torch_optim_lbfgs_on_a_quadratic() -> None:
    torch.manual_seed(0)
    n = 40
    a = spd(n).float()
    ours = torch.randn(1, n)
    theirs = ours.clone().requires_grad_(True)
    opt = BatchedLBFGS(ours, history=6)
    reference = torch.optim.LBFGS([theirs], lr=1, max_iter=1, history_size=6,
                                  tolerance_grad=0, tolerance_change=0)

    def closure() -> torch.Tensor:
        reference.zero_grad()
        loss = 0.5 * (theirs @ a @ theirs.T).sum()
        loss.backward()
        return loss

    for _ in range(12):
        opt.step(ours, ours @ a)
        reference.step(closure)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-4, atol=1e-6)


def test_images_in_a_batch_keep_their_own_history() -> None:
    torch.manual_seed(1)
    n = 25
    a, b = spd(n).float(), spd(n).float()
    batch = torch.randn(2, n)
    alone = [batch[0:1].clone(), batch[1:2].clone()]
    opt = BatchedLBFGS(batch, history=4)
    opts = [BatchedLBFGS(x, history=4) for x in alone]
    for _ in range(10):
        opt.step(batch, torch.stack([batch[0] @ a, batch[1] @ b]))
        opts[0].step(alone[0], alone[0] @ a)
        opts[1].step(alone[1], alone[1] @ b)
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-5, atol=1e-6)


def test_rejected_curvature_pairs_are_harmless() -> None:
    x = torch.full((1, 4), 0.5)
    opt = BatchedLBFGS(x, history=3)
    for _ in range(6):
        # a gradient that does not change: y = 0, so every curvature pair is rejected and
        # the method falls back to (scaled) gradient descent
        opt.step(x, torch.tensor([[1.0, -1.0, 0.5, 0.0]]))
        assert torch.isfinite(x).all()
    assert x[0, 0] < 0.5 and x[0, 1] > 0.5 and x[0, 3] == 0.5


@pytest.mark.gpu
def test_a_step_never_synchronises_with_the_host() -> None:
    device = torch.device("cuda")
    x = torch.randn(2, 3, 32, 32, device=device)
    opt = BatchedLBFGS(x, history=10)
    opt.step(x, x.clone())  # first step: set-up allocations
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(12):
            opt.step(x, x * 0.5 + 0.1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()
