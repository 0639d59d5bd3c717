"""Train-time augmentation of CIFAR baselines: random crop (4 pixels of zero padding) and horizontal flip."""

from __future__ import annotations

import torch

PAD = 4


def crop_and_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image of the batch ``x`` (N, C, H, W) randomly cropped from its padded copy and flipped with p = 1/2.

    Offsets and flips are drawn from ``generator`` (on the CPU), so a batch is augmented
    the same way for the same seed.
    """
    n = len(x)
    dy = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return shift_and_flip(x, dy, dx, flip)


def shift_and_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Image i: the H x W window at (``dy[i]``, ``dx[i]``) of ``x[i]`` padded by ``PAD`` zeros, mirrored if ``flip[i]``.

    ``dy = dx = PAD`` and no flip is the image itself; 0 is the per-channel mean of normalised data.
    """
    n, c, h, w = x.shape
    cols = torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w)) + dx[:, None]  # (n, w)
    rows = torch.arange(h) + dy[:, None]  # (n, h)
    padded = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD))
    index = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[index, channel, rows[:, None, :, None].to(x.device), cols[:, None, None, :].to(x.device)]
