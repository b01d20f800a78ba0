"""Colour preservation: match a style's colours to the content, or keep the content's chroma."""

from __future__ import annotations

import torch

# RGB to YCbCr (ITU-R BT.601, full range), as rows.
YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                      [0.5, -0.418688, -0.081312]], dtype=torch.float64)


def match_color(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Recolour `style` so its RGB mean and covariance equal the content's (uint8 images)."""
    s = style.reshape(-1, 3).double()
    c = content.reshape(-1, 3).double()
    s_mean, c_mean = s.mean(0), c.mean(0)
    s_cov = torch.cov((s - s_mean).T) + 1e-5 * torch.eye(3, dtype=torch.float64)
    c_cov = torch.cov((c - c_mean).T) + 1e-5 * torch.eye(3, dtype=torch.float64)

    def sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(m)
        values = values.clamp_min(1e-8).sqrt()
        if inverse:
            values = 1 / values
        root: torch.Tensor = vectors @ torch.diag(values) @ vectors.T
        return root

    transform = sqrtm(c_cov) @ sqrtm(s_cov, inverse=True)
    out = (s - s_mean) @ transform.T + c_mean
    return out.round().clamp(0, 255).to(torch.uint8).reshape(style.shape)


def keep_luminance(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance (Y) with the content's chroma (Cb, Cr)."""
    r = result.reshape(-1, 3).double() @ YCBCR.T
    c = content.reshape(-1, 3).double() @ YCBCR.T
    mixed = torch.cat([r[:, :1], c[:, 1:]], dim=1)
    rgb: torch.Tensor = mixed @ torch.linalg.inv(YCBCR).T
    return rgb.round().clamp(0, 255).to(torch.uint8).reshape(result.shape)
