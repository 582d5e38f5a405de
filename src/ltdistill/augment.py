"""Differentiable Siamese Augmentation (DSA, SPEC §2) as sample-then-apply.

:func:`sample_dsa` draws one operation and its parameters from an explicit
``torch.Generator`` (never the global RNG); :func:`apply_dsa` is a pure,
differentiable function of the images and those parameters. *Siamese* mode draws a
single parameter set that broadcasts over any batch, so the real batch and the
synthetic images of a class get exactly the same transform.

Operations (one drawn per call, as in DSA's single mode): ``color`` (brightness
+U(-0.5, 0.5), saturation xU(0, 2) around the grey mean, contrast xU(0.5, 1.5)
around the image mean), ``crop`` (integer shift of up to 1/8 of the size, zero
pad), ``cutout`` (one square of half the size), ``flip`` (p 0.5), ``scale``
(U(1/1.2, 1.2) per axis) and ``rotate`` (U(-15, 15) degrees).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .errors import ConfigError

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAConfig:
    """DSA ranges (defaults are DSA's)."""

    strategy: str = DEFAULT_STRATEGY
    scale: float = 1.2
    rotate_deg: float = 15.0
    crop_ratio: float = 0.125
    cutout_ratio: float = 0.5
    flip_p: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5

    def ops(self) -> tuple[str, ...]:
        if self.strategy in ("", "none"):
            return ()
        ops = tuple(self.strategy.split("_"))
        bad = [o for o in ops if o not in OPS]
        if bad:
            raise ConfigError(f"unknown DSA operation(s) {bad}; known: {', '.join(OPS)}")
        return ops


@dataclass
class DSAParams:
    """One drawn operation and its parameters; leading dim is the batch size or 1 (siamese)."""

    op: str
    values: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device) -> DSAParams:
        # ``size`` (cutout) is a shape, read on the host: it stays there, so applying a
        # draw on a GPU never waits for the device.
        return DSAParams(self.op, {k: v if k == "size" else v.to(device, non_blocking=True)
                                   for k, v in self.values.items()})


def sample_dsa(
    n: int,
    image_size: int | tuple[int, int],
    generator: torch.Generator,
    cfg: DSAConfig = DSAConfig(),
    siamese: bool = False,
    values_generator: torch.Generator | None = None,
) -> DSAParams:
    """Draw one DSA operation and its parameters.

    Args:
        n: batch size (ignored when ``siamese``: a single draw is shared).
        image_size: H (square) or (H, W).
        generator: draws the operation (a host generator: which code path runs is a
            host decision) and, unless ``values_generator`` is given, its parameters.
        cfg: ranges and the strategy string.
        siamese: one parameter set for every image (DM/DSA siamese mode).
        values_generator: draws the parameters, on its own device (a GPU generator
            puts them where they are used, with no copy and no wait).
    """
    ops = cfg.ops()
    if not ops:
        return DSAParams("none")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    b = 1 if siamese else n
    op = ops[int(torch.randint(len(ops), (1,), generator=generator))]
    gv = values_generator if values_generator is not None else generator
    generator, dev = gv, gv.device

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(b, *shape, generator=generator, device=dev) * (hi - lo) + lo

    v: dict[str, torch.Tensor] = {}
    if op == "color":
        v["brightness"] = u(-cfg.brightness / 2, cfg.brightness / 2)
        v["saturation"] = u(0.0, cfg.saturation)
        v["contrast"] = u(1 - cfg.contrast, 1 + cfg.contrast)
    elif op == "crop":
        sx, sy = int(h * cfg.crop_ratio + 0.5), int(w * cfg.crop_ratio + 0.5)
        v["shift"] = torch.stack(
            [torch.randint(-sx, sx + 1, (b,), generator=generator, device=dev),
             torch.randint(-sy, sy + 1, (b,), generator=generator, device=dev)], 1)
    elif op == "cutout":
        ch, cw = int(h * cfg.cutout_ratio + 0.5), int(w * cfg.cutout_ratio + 0.5)
        v["size"] = torch.tensor([ch, cw])
        v["center"] = torch.stack(
            [torch.randint(0, h + (1 - ch % 2), (b,), generator=generator, device=dev),
             torch.randint(0, w + (1 - cw % 2), (b,), generator=generator, device=dev)], 1)
    elif op == "flip":
        v["flip"] = torch.rand(b, generator=generator, device=dev) < cfg.flip_p
    elif op == "scale":
        v["scale"] = u(1 / cfg.scale, cfg.scale, 2)
    elif op == "rotate":
        v["angle"] = u(-cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180)
    return DSAParams(op, v)


def sample_dsa_classes(
    num_classes: int,
    image_size: int | tuple[int, int],
    generator: torch.Generator,
    values_generator: torch.Generator,
    cfg: DSAConfig = DSAConfig(),
) -> list[DSAParams]:
    """One siamese draw per class, all in one call: the classes' operations from the host
    ``generator`` (one draw of ``num_classes`` integers), every parameter from one
    ``rand(num_classes, 3)`` on ``values_generator``'s device. Each class's parameters are
    a view of that tensor (no per-class kernel, copy or host wait). Ranges as
    :func:`sample_dsa`; the stream differs from calling it per class.
    """
    ops = cfg.ops()
    if not ops:
        return [DSAParams("none") for _ in range(num_classes)]
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    picks = torch.randint(len(ops), (num_classes,), generator=generator).tolist()
    gv = values_generator
    r = torch.rand(num_classes, 3, generator=gv, device=gv.device)
    used = {ops[k] for k in picks}

    def aff(col: slice | int, lo: float, hi: float) -> torch.Tensor:
        return r[:, col] * (hi - lo) + lo

    derived: dict[str, dict[str, torch.Tensor]] = {}
    if "color" in used:
        derived["color"] = {"brightness": aff(0, -cfg.brightness / 2, cfg.brightness / 2),
                            "saturation": aff(1, 0.0, cfg.saturation),
                            "contrast": aff(2, 1 - cfg.contrast, 1 + cfg.contrast)}
    if "crop" in used:
        s = torch.tensor([int(h * cfg.crop_ratio + 0.5), int(w * cfg.crop_ratio + 0.5)], device=gv.device)
        derived["crop"] = {"shift": (r[:, :2] * (2 * s + 1)).floor().long().clamp(max=2 * s) - s}
    ch, cw = int(h * cfg.cutout_ratio + 0.5), int(w * cfg.cutout_ratio + 0.5)
    if "cutout" in used:
        hi = torch.tensor([h + (1 - ch % 2), w + (1 - cw % 2)], device=gv.device)
        derived["cutout"] = {"center": (r[:, :2] * hi).floor().long().clamp(max=hi - 1)}
    if "flip" in used:
        derived["flip"] = {"flip": r[:, 0] < cfg.flip_p}
    if "scale" in used:
        derived["scale"] = {"scale": aff(slice(0, 2), 1 / cfg.scale, cfg.scale)}
    if "rotate" in used:
        derived["rotate"] = {"angle": aff(0, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180)}
    out = []
    for c, k in enumerate(picks):
        op = ops[k]
        v = {name: t[c : c + 1] for name, t in derived[op].items()}
        if op == "cutout":
            v["size"] = torch.tensor([ch, cw])
        out.append(DSAParams(op, v))
    return out


def _bcast(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t


def apply_dsa(x: torch.Tensor, params: DSAParams) -> torch.Tensor:
    """Apply drawn DSA parameters to ``x`` (``N x C x H x W``); differentiable in ``x``."""
    n, _, h, w = x.shape
    p = params.to(x.device)
    v = p.values
    if p.op == "none":
        return x
    if p.op == "color":
        bshape = (-1, 1, 1, 1)
        x = x + _bcast(v["brightness"], n).view(bshape).to(x.dtype)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * _bcast(v["saturation"], n).view(bshape).to(x.dtype) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * _bcast(v["contrast"], n).view(bshape).to(x.dtype) + m
    if p.op == "flip":
        return torch.where(_bcast(v["flip"], n).view(-1, 1, 1, 1), x.flip(3), x)
    if p.op == "crop":
        shift = _bcast(v["shift"], n)
        rows = torch.arange(h, device=x.device).view(1, h, 1) + shift[:, 0].view(-1, 1, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w) + shift[:, 1].view(-1, 1, 1)
        xp = F.pad(x, (1, 1, 1, 1))  # one zero border; out-of-range reads land on it
        rows = (rows + 1).clamp(0, h + 1).expand(n, h, w)
        cols = (cols + 1).clamp(0, w + 1).expand(n, h, w)
        bidx = torch.arange(n, device=x.device).view(-1, 1, 1).expand(n, h, w)
        return xp.permute(0, 2, 3, 1)[bidx, rows, cols].permute(0, 3, 1, 2)
    if p.op == "cutout":
        ch, cw = int(v["size"][0]), int(v["size"][1])
        c = _bcast(v["center"], n)
        r0 = (c[:, 0] - ch // 2).view(-1, 1, 1)
        c0 = (c[:, 1] - cw // 2).view(-1, 1, 1)
        rr = torch.arange(h, device=x.device).view(1, h, 1)
        cc = torch.arange(w, device=x.device).view(1, 1, w)
        hole = (rr >= r0) & (rr < r0 + ch) & (cc >= c0) & (cc < c0 + cw)
        return x * (~hole).unsqueeze(1).to(x.dtype)
    if p.op in ("scale", "rotate"):
        if p.op == "scale":
            s = _bcast(v["scale"], n).to(x.dtype)
            z = torch.zeros(n, device=x.device, dtype=x.dtype)
            theta = torch.stack([torch.stack([s[:, 0], z, z], 1), torch.stack([z, s[:, 1], z], 1)], 1)
        else:
            a = _bcast(v["angle"], n).to(x.dtype)
            z = torch.zeros(n, device=x.device, dtype=x.dtype)
            theta = torch.stack([torch.stack([a.cos(), a.sin(), z], 1),
                                 torch.stack([-a.sin(), a.cos(), z], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)
    raise ConfigError(f"unknown DSA operation {p.op!r}")


def dsa(
    x: torch.Tensor, generator: torch.Generator, cfg: DSAConfig = DSAConfig(), siamese: bool = False
) -> torch.Tensor:
    """Sample and apply in one call (per-sample by default)."""
    return apply_dsa(x, sample_dsa(x.shape[0], tuple(x.shape[-2:]), generator, cfg, siamese))
