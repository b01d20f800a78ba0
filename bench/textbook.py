"""The textbook Gatys loop, kept apart from the service's engine as the yardstick.

`torch.optim.LBFGS` (history 100, one iteration per step), content loss MSE at relu4_2,
style loss MSE of Gram matrices / (C*H*W) at relu1_1..relu5_1, optional TV, on the same
Caffe VGG19 and input space. Also the referee: `reference_loss` scores any final image in
fp32 with these losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from app.nets.vgg import VGG19Features

MEAN_BGR = (103.939, 116.779, 123.68)
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


def to_net(image: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = image.to(device).permute(2, 0, 1).float()[[2, 1, 0]]
    return (x - torch.tensor(MEAN_BGR, device=device)[:, None, None]).unsqueeze(0).contiguous()


def to_image(x: torch.Tensor) -> torch.Tensor:
    y = x.detach()[0] + torch.tensor(MEAN_BGR, device=x.device)[:, None, None]
    return y[[2, 1, 0]].round().clamp(0, 255).byte().permute(1, 2, 0).cpu()


def gram(f: torch.Tensor) -> torch.Tensor:
    _, c, h, w = f.shape
    flat = f.float().reshape(c, h * w)
    return flat @ flat.T / (c * h * w)


class Objective:
    def __init__(self, vgg: VGG19Features, content: torch.Tensor, style: torch.Tensor,
                 device: torch.device, style_weight: float, tv_weight: float) -> None:
        self.vgg, self.style_weight, self.tv_weight = vgg, style_weight, tv_weight
        with torch.no_grad():
            self.content = vgg(to_net(content, device), [CONTENT_LAYER])[CONTENT_LAYER].float()
            feats = vgg(to_net(style, device), STYLE_LAYERS)
            self.grams = {k: gram(feats[k]) for k in STYLE_LAYERS}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.vgg(x, (CONTENT_LAYER, *STYLE_LAYERS))
        loss = F.mse_loss(feats[CONTENT_LAYER].float(), self.content)
        for layer in STYLE_LAYERS:
            loss = loss + self.style_weight * F.mse_loss(gram(feats[layer]), self.grams[layer])
        if self.tv_weight:
            tv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (
                x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
            loss = loss + self.tv_weight * tv
        return loss


def textbook(vgg: VGG19Features, content: torch.Tensor, style: torch.Tensor, steps: int,
             device: torch.device, style_weight: float, tv_weight: float) -> torch.Tensor:
    """Returns the final uint8 image."""
    objective = Objective(vgg, content, style, device, style_weight, tv_weight)
    x = to_net(content, device).requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1, max_iter=1, history_size=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective(x)
        torch.autograd.backward(loss)
        return loss

    for _ in range(steps):
        optimizer.step(closure)  # type: ignore[no-untyped-call]  # torch leaves it untyped
    return to_image(x)


def reference_loss(vgg: VGG19Features, image: torch.Tensor, content: torch.Tensor,
                   style: torch.Tensor, device: torch.device, style_weight: float,
                   tv_weight: float) -> float:
    """The textbook total loss of a final uint8 image, in fp32."""
    objective = Objective(vgg, content, style, device, style_weight, tv_weight)
    with torch.no_grad():
        return float(objective(to_net(image, device)))
