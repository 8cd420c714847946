"""Figures used by the chapters: 2-D point clouds, densities, score fields, trajectories,
curves. Each function draws on a given matplotlib ``Axes`` (or makes one) and returns it, so
that a chapter composes figures with ``plt.subplots`` and the library draws them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["scatter2d", "density2d", "score_field2d", "trajectories2d", "grid2d", "curves",
           "image_grid", "show_images", "save_images"]


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else np.asarray(x, dtype=float)


def _ax(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    return ax


def _square(ax, lim, title):
    """Equal axes on ``[-lim, lim]^2`` (no limits if ``lim`` is None) and an optional title."""
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def grid2d(lim: float = 3.0, n: int = 200) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """A square grid on ``[-lim, lim]^2``: ``(points (n*n, 2) float64, X, Y)``."""
    xs = np.linspace(-lim, lim, n)
    X, Y = np.meshgrid(xs, xs)
    pts = torch.from_numpy(np.stack([X.ravel(), Y.ravel()], axis=1))
    return pts, X, Y


def scatter2d(x, ax=None, *, lim: float | None = 3.0, s: float = 2.0, alpha: float = 0.5,
              title: str | None = None, **kw):
    """Scatter a ``(n, 2)`` point cloud with equal axes."""
    ax = _ax(ax)
    p = _np(x)
    ax.scatter(p[:, 0], p[:, 1], s=s, alpha=alpha, **kw)
    return _square(ax, lim, title)


def density2d(log_prob: Callable[[torch.Tensor], torch.Tensor], ax=None, *, lim: float = 3.0,
              n: int = 200, title: str | None = None, cmap: str = "viridis"):
    """Image of ``exp(log_prob(points))`` on a grid; ``log_prob`` maps ``(N, 2)`` to ``(N,)``."""
    ax = _ax(ax)
    pts, X, Y = grid2d(lim, n)
    with torch.no_grad():
        dens = torch.exp(log_prob(pts)).reshape(n, n)
    ax.imshow(_np(dens), extent=(-lim, lim, -lim, lim), origin="lower", cmap=cmap)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def score_field2d(score: Callable[[torch.Tensor], torch.Tensor], ax=None, *, lim: float = 3.0,
                  n: int = 20, title: str | None = None, normalise: bool = True, **kw):
    """Quiver plot of a vector field ``score(points (N, 2)) -> (N, 2)`` on an ``n x n`` grid."""
    ax = _ax(ax)
    pts, X, Y = grid2d(lim, n)
    with torch.no_grad():
        v = _np(score(pts))
    if normalise:
        v = v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-12)
    ax.quiver(X, Y, v[:, 0].reshape(n, n), v[:, 1].reshape(n, n), **kw)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def trajectories2d(path: Sequence, ax=None, *, n: int = 50, lim: float | None = 3.0,
                   title: str | None = None, color: str = "C0"):
    """Draw the first ``n`` trajectories of a list of ``(B, 2)`` states (start ``o``, end ``*``)."""
    ax = _ax(ax)
    p = np.stack([_np(x)[:n] for x in path])  # (steps, n, 2)
    ax.plot(p[:, :, 0], p[:, :, 1], color=color, lw=0.6, alpha=0.6)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=8, marker="o", color="gray", zorder=3)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=14, marker="*", color="k", zorder=3)
    return _square(ax, lim, title)


def curves(x, ys: dict, ax=None, *, xlabel: str = "", ylabel: str = "", logx=False, logy=False,
           title: str | None = None, marker: str = "o"):
    """Several named curves ``ys = {label: values}`` against ``x``, with a legend."""
    ax = _ax(ax)
    for label, y in ys.items():
        ax.plot(_np(x), _np(y), marker=marker, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    return ax


def image_grid(x, nrow: int = 8, pad: int = 1, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Tile images ``(B, C, H, W)`` into one ``(rows*(H+pad)+pad, nrow*(W+pad)+pad[, C])`` array
    in ``[0, 1]`` (values outside ``value_range`` are clipped); C = 1 gives a 2-D array."""
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must have shape (B, 1 or 3, H, W), got {tuple(x.shape)}")
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    B, C, H, W = x.shape
    ncol = min(nrow, B)
    rows = -(-B // ncol)
    grid = torch.ones(C, rows * (H + pad) + pad, ncol * (W + pad) + pad)  # white frame
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = x[i]
    grid = grid.permute(1, 2, 0).numpy()  # (H', W', C)
    return grid[..., 0] if C == 1 else grid


def show_images(x, ax=None, *, nrow: int = 8, title: str | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0)):
    """Show images ``(B, C, H, W)`` with values in ``value_range`` as one grid."""
    ax = _ax(ax)
    ax.imshow(image_grid(x, nrow, value_range=value_range), cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def save_images(x, path, *, nrow: int = 8, scale: int = 4,
                value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    """Write images ``(B, C, H, W)`` as one PNG grid, each pixel enlarged ``scale`` times."""
    import matplotlib.image

    grid = image_grid(x, nrow, value_range=value_range)
    grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    matplotlib.image.imsave(str(path), grid, cmap="gray", vmin=0, vmax=1)
