"""Batched, on-device augmentation that makes MNIST digits look like canvas drawings.

People draw with a mouse or a finger: digits come out tilted, squashed, off-centre,
wobbly, and drawn with thinner or thicker pens than the scanned MNIST strokes. Every
transform here works on a whole batch [N,1,28,28] at once, on whatever device the
batch is on, with per-sample random parameters:

- stroke thickness: blend towards a 3x3 max-pool (dilation: thick pen) or a 3x3
  min-pool (erosion: thin pen) by a random amount;
- one resampling pass (F.affine_grid + F.grid_sample) for a random affine transform
  (rotation, scale with a little aspect change, shear, translation) plus a smooth
  random elastic displacement (4x4 noise upsampled to 28x28);
- ink softness: a random 3x3 Gaussian blur on some samples, and a random gamma on
  stroke intensity (antialiased canvas strokes vs. scanned grey levels).

Randomness comes from torch's global RNG, so seeding each rank seeds its augmentation.
"""
import math

import torch
import torch.nn.functional as F


def _uniform(n, lo, hi, device):
    return torch.empty(n, device=device).uniform_(lo, hi)


def stroke_thickness(x, lo=-0.5, hi=0.8, p=0.5):
    """Thin (t<0, erosion) or thicken (t>0, dilation) strokes by a random t in [lo, hi] for a fraction p."""
    n = x.shape[0]
    t = _uniform(n, lo, hi, x.device) * (torch.rand(n, device=x.device) < p)
    t = t.view(n, 1, 1, 1)
    thick = F.max_pool2d(x, 3, stride=1, padding=1)
    thin = -F.max_pool2d(-x, 3, stride=1, padding=1)
    return x + t.clamp(min=0) * (thick - x) + (-t).clamp(min=0) * (thin - x)


def random_grid(n, size, device, rotate=12.0, scale=(0.9, 1.1), aspect=0.08, shear=0.15,
                translate=0.12, elastic=0.03):
    """Sampling grid [n, size, size, 2] for a random affine + elastic warp (normalized coordinates)."""
    angle = _uniform(n, -rotate, rotate, device) * (math.pi / 180)
    s = _uniform(n, *scale, device)
    a = _uniform(n, -aspect, aspect, device)
    sx, sy = s * (1 + a), s * (1 - a)
    sh = _uniform(n, -shear, shear, device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta maps output coordinates to input coordinates, so scaling the *input*
    # lookups by 1/s makes the digit s times larger in the output.
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = cos / sx
    theta[:, 0, 1] = (-sin + sh * cos) / sx
    theta[:, 1, 0] = sin / sy
    theta[:, 1, 1] = (cos + sh * sin) / sy
    theta[:, :, 2] = torch.empty(n, 2, device=device).uniform_(-translate, translate)
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    if elastic > 0:
        noise = torch.randn(n, 2, 4, 4, device=device) * elastic
        field = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
    return grid


def blur(x, p=0.2, sigma=(0.4, 0.9)):
    """Gaussian-blur a random fraction p of the batch with a random sigma (3x3 kernel)."""
    n = x.shape[0]
    sig = _uniform(n, *sigma, x.device)
    r = torch.tensor([-1.0, 0.0, 1.0], device=x.device)
    k1 = torch.exp(-(r.view(1, 3) ** 2) / (2 * sig.view(n, 1) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1.view(n, 3, 1) * k1.view(n, 1, 3)).view(n, 1, 3, 3)
    # One grouped conv blurs every sample with its own kernel.
    out = F.conv2d(x.view(1, n, *x.shape[2:]), k2, padding=1, groups=n).view_as(x)
    keep = (torch.rand(n, 1, 1, 1, device=x.device) >= p).to(x.dtype)
    return keep * x + (1 - keep) * out


def augment(x):
    """Augment a batch of pixel/255 images [N,1,H,W] in place of the originals; returns a new tensor."""
    n, _, h, w = x.shape
    x = stroke_thickness(x)
    x = F.grid_sample(x, random_grid(n, h, x.device), mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    x = blur(x)
    gamma = torch.exp(_uniform(n, -0.25, 0.25, x.device)).view(n, 1, 1, 1)
    return x.clamp(0, 1).pow(gamma)
