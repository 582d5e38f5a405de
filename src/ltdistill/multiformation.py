"""Multi-formation (NCFM's "factor"): one stored image holds a ``f x f`` mosaic.

With factor 2 each stored ``H x W`` synthetic image holds four ``H/2 x W/2``
tiles; for matching and for training evaluation networks it is decoded into four
images upsampled back to ``H x W``: 4 x IPC training images from IPC stored images
at the same pixel budget (SPEC §4b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import ConfigError


def _check(h: int, w: int, factor: int) -> None:
    if factor < 1 or h % factor or w % factor:
        raise ConfigError(f"factor {factor} must divide the image size {h}x{w}")


def decode(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``N x C x H x W`` mosaics -> ``N*f*f x C x H x W`` images (tiles row-major, bilinear upsampling).

    Image ``n*f*f + i*f + j`` is tile (row i, column j) of mosaic n. Differentiable.
    """
    if factor == 1:
        return x
    n, c, h, w = x.shape
    _check(h, w, factor)
    th, tw = h // factor, w // factor
    tiles = x.reshape(n, c, factor, th, factor, tw).permute(0, 2, 4, 1, 3, 5).reshape(n * factor * factor, c, th, tw)
    return F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)


def encode(x: torch.Tensor, factor: int, resize: str = "area") -> torch.Tensor:
    """Inverse for initialisation: ``N*f*f`` full-size images -> ``N`` mosaics of downsampled tiles.

    Each image is downsampled by ``f`` (``area``: the mean of each f x f block; ``nearest``:
    every f-th pixel, as NCFM's "mix" initialisation resizes) and placed at tile ``(i, j)``
    in the order :func:`decode` reads them, so ``decode(encode(x))`` is a blurred ``x``.
    """
    if factor == 1:
        return x
    m, c, h, w = x.shape
    _check(h, w, factor)
    if m % (factor * factor):
        raise ConfigError(f"encode needs a multiple of {factor * factor} images, got {m}")
    if resize == "area":
        small = F.avg_pool2d(x, factor)
    elif resize == "nearest":
        small = x[:, :, ::factor, ::factor]
    else:
        raise ConfigError(f"resize must be 'area' or 'nearest', got {resize!r}")
    n = m // (factor * factor)
    th, tw = h // factor, w // factor
    return small.reshape(n, factor, factor, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
