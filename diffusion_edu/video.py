r"""Moving digits: a small video data set made in code, and the measures of chapter 14.

A clip is one bundled 8x8 digit :math:`D` (:func:`diffusion_edu.data.load_digits`, ink
:math:`D_{ab} = v_{ab} / 16 \in [0, 1]`) moving with constant velocity inside a ``size x size``
frame and bouncing elastically off the walls. Its top-left corner at frame :math:`t` is, per axis,

.. math::  p(t) = L - \big|\,(p_0 + v\,t) \bmod 2L - L\,\big| , \qquad L = \text{size} - 8 ,

the unfolded straight line :math:`p_0 + v t` folded back into :math:`[0, L]` (a triangle wave).
The frame is drawn at sub-pixel positions with the linear-interpolation ("hat") kernel
:math:`A(p)_{ia} = \max(0, 1 - |i - a - p|)`,

.. math::  \text{ink}_t = A(p_r(t))\, D\, A(p_c(t))^\top , \qquad x_t = 2\,\text{ink}_t - 1 \in [-1, 1] .

For ``0 <= p <= L`` every column of :math:`A(p)` sums to 1 and has first moment
:math:`\sum_i i\,A(p)_{ia} = a + p`, so the ink is conserved and the **centre of mass** of every
frame is exactly the digit's own centre of mass plus :math:`p(t)`: it moves on a straight line
between bounces, with zero second difference. :func:`motion_roughness` measures how far a clip is
from that (0 for real clips up to float rounding), :func:`frame_labels` reads the digit of every
frame with a classifier of 8x8 digits, and :func:`identity_constancy` is the fraction of clips
whose frames all get one label. The velocities are at most ``L / (T - 1)`` pixels per frame per
axis, so that a clip bounces at most once per axis.

Shapes: videos are ``(N, C, T, H, W)`` (channels, then frames), the layout of
:class:`~diffusion_edu.nets.video_unet.VideoUNet` and of Ho et al. (2022), "Video Diffusion Models".
"""

from __future__ import annotations

from typing import Callable

import torch

from .data import load_digits

__all__ = ["moving_digits", "centre_of_mass", "motion_roughness", "centred_crops", "frame_labels",
           "identity_constancy", "hat_matrix", "DIGIT_SIZE"]

DIGIT_SIZE = 8  # the bundled digits are 8x8


def hat_matrix(p: torch.Tensor, size: int, width: int = DIGIT_SIZE) -> torch.Tensor:
    """Linear-interpolation placement matrices ``A(p)_{ia} = max(0, 1 - |i - a - p|)``.

    ``p`` has any shape ``S``; the result is ``(*S, size, width)``: ``A @ d`` puts a length-``width``
    signal ``d`` at the sub-pixel offset ``p`` of a length-``size`` line.

    Examples
    --------
    >>> A = hat_matrix(torch.tensor(1.25), 4, 2)
    >>> A
    tensor([[0.0000, 0.0000],
            [0.7500, 0.0000],
            [0.2500, 0.7500],
            [0.0000, 0.2500]])
    >>> (torch.arange(4.0) @ A).tolist()   # first moments a + p
    [1.25, 2.25]
    """
    i = torch.arange(size, dtype=p.dtype, device=p.device)[:, None]  # (size, 1)
    a = torch.arange(width, dtype=p.dtype, device=p.device)[None, :]  # (1, width)
    return (1 - (i - a - p[..., None, None]).abs()).clamp(min=0)  # (*S, size, width)


def moving_digits(
    n: int, *, frames: int = 8, size: int = 16, generator: torch.Generator | None = None,
    split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` clips of a bundled digit moving with constant velocity and bouncing off the walls.

    Parameters
    ----------
    n : number of clips
    frames : frames per clip ``T`` (at least 2)
    size : frame height and width (at least 9, so that the digit can move)
    generator : source of the random digits, start positions and velocities
    split : which split of :func:`~diffusion_edu.data.load_digits` the digits come from

    Returns
    -------
    videos : ``(n, 1, T, size, size)`` float32 in ``[-1, 1]``
    labels : ``(n,)`` int64, the digit of each clip
    positions : ``(n, T, 2)`` float32, the top-left corner ``(row, column)`` of the digit per frame
    velocities : ``(n, 2)`` float32, pixels per frame at ``t = 0`` (a bounce flips the sign); per
        axis a random sign times a speed uniform in ``[0.4, 1] * L / (T - 1)``, ``L = size - 8``, so
        that a clip bounces at most once per axis; start corners are uniform in ``[0, L]^2``

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> v, y, p, vel = moving_digits(4, frames=6, size=16, generator=g)
    >>> v.shape, y.shape, p.shape, vel.shape
    (torch.Size([4, 1, 6, 16, 16]), torch.Size([4]), torch.Size([4, 6, 2]), torch.Size([4, 2]))
    >>> bool(v.min() >= -1 and v.max() <= 1)
    True
    """
    for name, value, lo in (("n", n, 1), ("frames", frames, 2), ("size", size, DIGIT_SIZE + 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    digits, digit_labels = load_digits(DIGIT_SIZE, split)  # (N, 1, 8, 8) in [-1, 1]; checks split
    ink = (digits[:, 0] + 1) / 2  # (N, 8, 8) in [0, 1]
    L = float(size - DIGIT_SIZE)  # the top-left corner ranges over [0, L]
    v_max = L / (frames - 1)  # at most one bounce per axis within a clip

    idx = torch.randint(len(ink), (n,), generator=generator)  # (n,)
    p0 = L * torch.rand(n, 2, generator=generator)  # (n, 2)
    speed = v_max * (0.4 + 0.6 * torch.rand(n, 2, generator=generator))  # (n, 2) in [0.4, 1] v_max
    sign = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0)
    velocities = sign * speed  # (n, 2)

    t = torch.arange(frames, dtype=torch.float32)  # (T,)
    unfolded = p0[:, None, :] + velocities[:, None, :] * t[None, :, None]  # (n, T, 2), the straight line
    positions = L - ((unfolded % (2 * L)) - L).abs()  # (n, T, 2): folded into [0, L]
    A_row = hat_matrix(positions[..., 0], size)  # (n, T, size, 8)
    A_col = hat_matrix(positions[..., 1], size)  # (n, T, size, 8)
    frames_ink = torch.einsum("ntia,nab,ntjb->ntij", A_row, ink[idx], A_col)  # (n, T, size, size)
    videos = (2 * frames_ink - 1).clamp(-1, 1)[:, None]  # (n, 1, T, size, size); clamp: round-off only
    return videos.contiguous(), digit_labels[idx], positions, velocities


def centre_of_mass(videos: torch.Tensor) -> torch.Tensor:
    r"""Centre of mass ``(row, column)`` of the ink of every frame, ``(N, T, 2)``.

    The ink of a pixel is ``(x + 1) / 2`` clipped to ``[0, 1]`` (background ``-1`` weighs 0), summed
    over channels; :math:`c_t = \sum_{ij} (i, j)\, \text{ink}_{tij} / \sum_{ij} \text{ink}_{tij}`. A
    frame without ink gets the frame centre.

    Examples
    --------
    >>> v = -torch.ones(1, 1, 2, 5, 5)
    >>> v[0, 0, 0, 1, 3] = 1.0; v[0, 0, 1, 2:4, 0] = 1.0
    >>> centre_of_mass(v)
    tensor([[[1.0000, 3.0000],
             [2.5000, 0.0000]]])
    """
    _check_videos(videos, "videos")
    ink = ((videos.float() + 1) / 2).clamp(0, 1).sum(1)  # (N, T, H, W)
    H, W = ink.shape[-2:]
    rows = torch.arange(H, dtype=ink.dtype, device=ink.device)
    cols = torch.arange(W, dtype=ink.dtype, device=ink.device)
    mass = ink.sum((-2, -1))  # (N, T)
    r = (ink.sum(-1) * rows).sum(-1)  # (N, T): sum_i i * (row sums)
    c = (ink.sum(-2) * cols).sum(-1)  # (N, T)
    empty = mass <= 0
    safe = torch.where(empty, torch.ones_like(mass), mass)
    r = torch.where(empty, torch.full_like(r, (H - 1) / 2), r / safe)
    c = torch.where(empty, torch.full_like(c, (W - 1) / 2), c / safe)
    return torch.stack([r, c], dim=-1)  # (N, T, 2)


def motion_roughness(centres: torch.Tensor, *, trim: int = 2) -> torch.Tensor:
    r"""How far each track is from constant-velocity motion with bounces, ``(N,)`` in pixels.

    Per clip and axis, the absolute second differences
    :math:`|c_{t+1} - 2 c_t + c_{t-1}|`, ``t = 1 .. T-2``, are zero wherever the true dynamics of
    :func:`moving_digits` hold (straight motion); one bounce changes at most two of them (those whose
    three frames straddle it), so the ``trim`` largest per axis are dropped ("away from bounces")
    and the rest averaged; the result is the mean over the two axes. Real clips give 0 up to the
    float rounding of :func:`centre_of_mass`.

    Parameters
    ----------
    centres : ``(N, T, 2)`` tracks, e.g. ``centre_of_mass(videos)``; ``T >= trim + 3``
    trim : second differences dropped per axis (2: at most one bounce per axis)

    Examples
    --------
    >>> t = torch.arange(8.0)
    >>> line = torch.stack([2 + 0.5 * t, 9 - t], -1)[None]  # (1, 8, 2): straight motion
    >>> motion_roughness(line)
    tensor([0.])
    >>> bounce = torch.stack([2 + 0.5 * t, 8 - (4 - t).abs()], -1)[None]  # a bounce at t = 4
    >>> motion_roughness(bounce)
    tensor([0.])
    """
    if not torch.is_tensor(centres) or centres.ndim != 3 or centres.shape[-1] != 2:
        raise ValueError(f"centres must be a (N, T, 2) tensor, got "
                         f"{tuple(centres.shape) if torch.is_tensor(centres) else type(centres).__name__}")
    if isinstance(trim, bool) or not isinstance(trim, int) or trim < 0:
        raise ValueError(f"trim must be a non-negative int, got {trim!r}")
    if centres.shape[1] < trim + 3:
        raise ValueError(f"centres must have at least trim + 3 = {trim + 3} frames, got {centres.shape[1]}")
    d2 = (centres[:, 2:] - 2 * centres[:, 1:-1] + centres[:, :-2]).abs()  # (N, T-2, 2)
    kept = d2.sort(dim=1).values[:, : d2.shape[1] - trim]  # (N, T-2-trim, 2): the smallest
    return kept.mean(dim=(1, 2))  # (N,)


def centred_crops(videos: torch.Tensor, window: int = DIGIT_SIZE) -> torch.Tensor:
    """The ``window x window`` square of every frame centred on its centre of mass,
    ``(N, T, C, window, window)``.

    The corner is ``round(c - (window - 1) / 2)`` per axis (:func:`centre_of_mass` ``c``), moved
    inside the frame if needed. A bundled digit's own centre of mass lies within 1.2 pixels of the
    centre of its 8x8 box, so an 8x8 crop of a clip of :func:`moving_digits` holds the digit shifted
    by at most about two pixels.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> centred_crops(moving_digits(3, frames=4, generator=g)[0]).shape
    torch.Size([3, 4, 1, 8, 8])
    """
    _check_videos(videos, "videos")
    N, C, T, H, W = videos.shape
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= min(H, W):
        raise ValueError(f"window must be an int in 1..{min(H, W)}, got {window!r}")
    corner = (centre_of_mass(videos) - (window - 1) / 2).round().long()  # (N, T, 2)
    r0 = corner[..., 0].clamp(0, H - window)  # (N, T)
    c0 = corner[..., 1].clamp(0, W - window)
    k = torch.arange(window, device=videos.device)
    rows = (r0[..., None] + k)[..., :, None]  # (N, T, window, 1)
    cols = (c0[..., None] + k)[..., None, :]  # (N, T, 1, window)
    n_idx = torch.arange(N, device=videos.device)[:, None, None, None]
    t_idx = torch.arange(T, device=videos.device)[None, :, None, None]
    crops = videos.transpose(1, 2)[n_idx, t_idx, :, rows, cols]  # (N, T, window, window, C)
    return crops.permute(0, 1, 4, 2, 3).contiguous()  # (N, T, C, window, window)


def frame_labels(classifier: Callable[[torch.Tensor], torch.Tensor], videos: torch.Tensor,
                 *, window: int = DIGIT_SIZE) -> torch.Tensor:
    """The digit a classifier of ``window x window`` images reads in every frame, ``(N, T)`` int64.

    The :func:`centred_crops` of all frames go through ``classifier`` in one batch
    ``(N T, C, window, window)``; the label is the arg-max of its logits. Why crops: a classifier of
    8x8 digits as in chapter 8 serves unchanged (trained on such crops of real clips, it sees at
    test time what it saw in training), and what it reads depends on the frame's content, not on
    where the digit is.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> v, y, p, _ = moving_digits(3, frames=4, generator=g)
    >>> ink_left = lambda x: torch.stack([x[:, 0, :, :4].sum((1, 2)), x[:, 0, :, 4:].sum((1, 2))], 1)
    >>> frame_labels(ink_left, v).shape
    torch.Size([3, 4])
    """
    if not callable(classifier):
        raise ValueError(f"classifier must be callable as classifier(images) -> logits, got {type(classifier).__name__}")
    crops = centred_crops(videos, window)  # (N, T, C, w, w); checks videos and window
    N, T = crops.shape[:2]
    with torch.no_grad():
        logits = classifier(crops.flatten(0, 1))  # (N T, K)
    if not torch.is_tensor(logits) or logits.ndim != 2 or logits.shape[0] != N * T:
        raise ValueError(f"classifier must return logits of shape ({N * T}, classes), got "
                         f"{tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__}")
    return logits.argmax(1).reshape(N, T)


def identity_constancy(labels: torch.Tensor) -> float:
    """Fraction of clips whose frames all get the same label; ``labels`` is ``(N, T)``.

    Examples
    --------
    >>> identity_constancy(torch.tensor([[3, 3, 3], [1, 7, 1]]))
    0.5
    """
    if not torch.is_tensor(labels) or labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty (N, T) tensor, got "
                         f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
    return (labels == labels[:, :1]).all(1).float().mean().item()


def _check_videos(videos, name: str) -> None:
    if not torch.is_tensor(videos) or videos.ndim != 5:
        raise ValueError(f"{name} must be a (N, C, T, H, W) tensor, got "
                         f"{'shape ' + str(tuple(videos.shape)) if torch.is_tensor(videos) else type(videos).__name__}")
    if min(videos.shape) < 1:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(videos.shape)}")
    if not videos.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {videos.dtype}")
