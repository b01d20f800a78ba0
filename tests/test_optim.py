"""The sync-free batched optimisers: L-BFGS with the same algebra as the textbook two-loop
recursion, Adam as torch.optim.Adam; rows that join mid-run keep their own trajectory."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from app.engines.optim import BatchedAdam, BatchedLBFGS


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


def test_a_row_that_joins_mid_run_follows_its_own_trajectory() -> None:
    """Continuous batching at the optimiser: B joins at A's step 5 (their rings wrap at
    different steps) and A leaves at its step 14; each row moves as it does alone."""
    torch.manual_seed(2)
    n, history = 25, 4
    hessians = [spd(n).float(), spd(n).float()]
    starts = [torch.randn(1, n), torch.randn(1, n)]
    alone = [s.clone() for s in starts]
    opts = [BatchedLBFGS(x, history=history) for x in alone]
    batch = starts[0].clone()
    opt = BatchedLBFGS(batch, history=history)
    for step in range(14):
        if step == 5:
            batch = torch.cat([batch, starts[1].clone()])
            opt.add(1)
        opt.step(batch, torch.cat([batch[r:r + 1] @ h for r, h in enumerate(hessians)
                                   if r < batch.shape[0]]))
        opts[0].step(alone[0], alone[0] @ hessians[0])
        if step >= 5:
            opts[1].step(alone[1], alone[1] @ hessians[1])
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-5, atol=1e-6)
    opt.keep(torch.tensor([1]))
    batch = batch[1:].clone()
    for _ in range(3):
        opt.step(batch, batch @ hessians[1])
        opts[1].step(alone[1], alone[1] @ hessians[1])
    torch.testing.assert_close(batch, alone[1], rtol=1e-5, atol=1e-6)
    assert opt.step_counts.tolist() == [12]


def test_adam_matches_torch_optim_adam_and_a_joined_row_keeps_its_own_bias_correction(
        ) -> None:
    torch.manual_seed(3)
    n, lr = 20, 0.05
    hessians = [spd(n).float(), spd(n).float()]
    starts = [torch.randn(1, n), torch.randn(1, n)]
    references = [s.clone().requires_grad_(True) for s in starts]
    torch_adams = [torch.optim.Adam([r], lr=lr) for r in references]
    batch = starts[0].clone()
    opt = BatchedAdam(batch, lr=lr)
    for step in range(8):
        if step == 3:
            batch = torch.cat([batch, starts[1].clone()])
            opt.add(1)
        opt.step(batch, torch.cat([batch[r:r + 1] @ h for r, h in enumerate(hessians)
                                   if r < batch.shape[0]]))
        for r, (reference, adam) in enumerate(zip(references, torch_adams, strict=True)):
            if r == 1 and step < 3:
                continue
            adam.zero_grad()
            reference.grad = (reference.detach() @ hessians[r])
            adam.step()
    torch.testing.assert_close(batch, torch.cat([r.detach() for r in references]),
                               rtol=1e-5, atol=1e-6)
    assert opt.step_counts.tolist() == [8, 5]


@contextmanager
def host_syncs_are_errors() -> Iterator[None]:
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_a_batch_with_a_joined_row_steps_without_synchronising() -> None:
    """Rows at different step counts (one on its first step, the others past the ring's
    wrap-around) take the same sync-free step; only `add` and `keep` may wait."""
    device = torch.device("cuda")
    x = torch.randn(2, 3, 32, 32, device=device)
    opt = BatchedLBFGS(x, history=4)
    for _ in range(6):
        opt.step(x, x * 0.5 + 0.1)
    x = torch.cat([x, torch.randn(1, 3, 32, 32, device=device)])
    opt.add(1)
    with host_syncs_are_errors():
        for _ in range(8):
            opt.step(x, x * 0.5 + 0.1)
    index = torch.tensor([0, 2], device=device)
    opt.keep(index)
    x = x[index]
    with host_syncs_are_errors():
        for _ in range(3):
            opt.step(x, x * 0.5 + 0.1)
    assert torch.isfinite(x).all()
    assert opt.step_counts.tolist() == [17, 11]


@pytest.mark.gpu
def test_an_adam_step_never_synchronises_with_the_host() -> None:
    device = torch.device("cuda")
    x = torch.randn(2, 3, 32, 32, device=device)
    bounds = (torch.full((1, 3, 1, 1), -2.0, device=device),
              torch.full((1, 3, 1, 1), 2.0, device=device))
    opt = BatchedAdam(x, lr=0.1)
    opt.step(x, x.clone(), bounds)
    x = torch.cat([x, torch.randn(1, 3, 32, 32, device=device)])
    opt.add(1)
    with host_syncs_are_errors():
        for _ in range(12):
            opt.step(x, x * 0.5 + 0.1, bounds)
    assert torch.isfinite(x).all() and opt.step_counts.tolist() == [13, 13, 12]


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_captured_step_replays_the_eager_trajectory(optimizer: str) -> None:
    """A step captured once in a CUDA graph and replayed moves a batch whose rows joined
    at different steps exactly as eager steps do: all state is updated in place."""
    device = torch.device("cuda")
    torch.manual_seed(4)
    start = torch.randn(2, 3, 16, 16, device=device)
    joining = torch.randn(1, 3, 16, 16, device=device)

    def make(x: torch.Tensor) -> BatchedLBFGS | BatchedAdam:
        return BatchedLBFGS(x, history=4) if optimizer == "lbfgs" else BatchedAdam(x, lr=0.1)

    def step(opt: BatchedLBFGS | BatchedAdam, x: torch.Tensor) -> None:
        opt.step(x, x * x * x * 0.1 + x * 0.5 + 0.1)  # the gradient of a convex quartic

    runs = []
    for _ in range(2):
        x = start.clone()
        opt = make(x)
        for _ in range(3):
            step(opt, x)
        x = torch.cat([x, joining])
        opt.add(1)
        runs.append((x, opt))
    (eager_x, eager_opt), (graph_x, graph_opt) = runs
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on the capture's stream, as the docs ask
        step(graph_opt, graph_x)
        step(eager_opt, eager_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        step(graph_opt, graph_x)
    for _ in range(7):  # past the ring's wrap-around for every row
        graph.replay()
        step(eager_opt, eager_x)
    torch.testing.assert_close(graph_x, eager_x, rtol=1e-5, atol=1e-5)
    assert graph_opt.step_counts.tolist() == eager_opt.step_counts.tolist() == [11, 11, 8]
