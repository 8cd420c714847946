r"""Audio made in code, and the three measurements chapter 14 takes of it: pitch, spectrogram, sound.

**The data** (:func:`make_notes`). A note of fundamental frequency ``f`` (Hz), sampled at
``sample_rate`` Hz for ``duration`` seconds, is a sum of a few harmonics under an envelope, plus a
little white noise:

.. math::  x[n] = a\, e(n / r) \sum_{k=1}^{K} h_k \sin(2\pi k f n / r + \phi_k) + \nu\, z[n],
           \qquad z[n] \sim N(0, 1),

with ``r`` the sample rate, ``h_k`` the harmonic amplitudes, ``phi_k`` uniform random phases,
``e(s)`` a linear attack followed by an exponential decay, ``a`` a random loudness and ``nu`` the
noise level; the label is the index of ``f`` in a scale. The sampling theorem asks for every
harmonic to lie below the Nyquist frequency ``r / 2``: ``K f_max < r / 2``; :func:`make_notes`
checks it. The defaults -- the eight notes of C major from C3 (130.8 Hz) to C4 (261.6 Hz), three
harmonics, ``r = 2000`` Hz, 0.128 s or 256 samples -- are chosen for a network that trains on a
CPU: its cost grows with the number of samples, only ``f / r`` matters to it, and the top harmonic,
``3 x 261.6 = 785`` Hz, still lies below the Nyquist frequency of 1 kHz.

**Pitch** (:func:`estimate_pitch`). The magnitude of the discrete Fourier transform of a
Hann-windowed, zero-padded note peaks at its fundamental. Bins are ``r / n_fft`` Hz apart; the
peak's frequency is refined between bins by fitting a parabola through the log-magnitudes of the
peak bin and its two neighbours (quadratic interpolation; Smith, *Spectral Audio Signal
Processing*): with ``alpha, beta, gamma`` the log-magnitudes at bins ``k - 1, k, k + 1``,

.. math::  \hat k = k + \frac{1}{2}\,\frac{\alpha - \gamma}{\alpha - 2\beta + \gamma}, \qquad
           \hat f = \hat k\, r / n_{\text{fft}} .

With ``harmonics=H > 1`` the peak is taken of the *harmonic product spectrum*
``prod_{h=1}^{H} |X(h f)|`` (Schroeder, 1968), which rewards a frequency whose multiples are
also loud and so avoids octave errors when an overtone is louder than the fundamental.
Musical distances are measured in cents, ``1200 log2(f / f_ref)``: 100 cents is a semitone.

**Spectrograms** (:func:`spectrogram`): the log-magnitude of the short-time Fourier transform
(``torch.stft`` with a Hann window).

Shapes: waves are ``(B, 1, L)``, one channel of ``L`` samples, the ``(B, C, L)`` layout of
``torch.nn.Conv1d``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

__all__ = ["C_MAJOR", "make_notes", "estimate_pitch", "spectrogram", "cents", "nearest_pitch", "resample",
           "midi_to_hz"]


def midi_to_hz(midi: float | Sequence[float]) -> list[float]:
    """Equal-tempered frequencies ``440 * 2^((m - 69) / 12)`` Hz of MIDI note numbers ``m``
    (69 is A4 = 440 Hz, 60 is middle C).

    Examples
    --------
    >>> [round(f, 2) for f in midi_to_hz([60, 69, 72])]
    [261.63, 440.0, 523.25]
    """
    ms = [midi] if isinstance(midi, (int, float)) else list(midi)
    return [440.0 * 2.0 ** ((m - 69) / 12) for m in ms]


C_MAJOR: tuple[float, ...] = tuple(midi_to_hz([48, 50, 52, 53, 55, 57, 59, 60]))
"""The C-major scale from C3 (130.8 Hz) to middle C (C4, 261.6 Hz): eight pitches, Hz."""


def make_notes(
    n: int, *, sample_rate: int = 2000, duration: float = 0.128, pitches: Sequence[float] = C_MAJOR,
    harmonics: Sequence[float] = (1.0, 0.5, 0.25), noise: float = 0.01, labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic notes ``(n, 1, L)`` in ``[-1, 1]`` with ``L = round(sample_rate * duration)``,
    and their labels ``(n,)``, indices into ``pitches`` (module docstring for the formula).

    Each note: a pitch from ``pitches`` (uniform, or the given ``labels``), harmonic ``k`` with
    amplitude ``harmonics[k - 1]`` and a uniform random phase, a 10 ms linear attack then an
    exponential decay whose time constant is drawn from ``[0.5, 1.5] * duration``, a peak
    amplitude drawn from ``[0.5, 0.9]``, and white noise of standard deviation ``noise``
    (clipped to ``[-1, 1]``).

    Examples
    --------
    >>> x, y = make_notes(5, generator=torch.Generator().manual_seed(0))
    >>> x.shape, y.shape, bool(x.abs().max() <= 1)
    (torch.Size([5, 1, 256]), torch.Size([5]), True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    _check_rate(sample_rate)
    if not (isinstance(duration, (int, float)) and math.isfinite(duration) and duration > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration!r}")
    L = round(sample_rate * duration)
    if L < 16:
        raise ValueError(f"sample_rate * duration must give at least 16 samples, got {L}")
    pitches = torch.as_tensor(pitches, dtype=torch.float64)
    if pitches.ndim != 1 or len(pitches) == 0 or not torch.isfinite(pitches).all() or (pitches <= 0).any():
        raise ValueError(f"pitches must be a non-empty 1-D sequence of positive frequencies (Hz), "
                         f"got {pitches.tolist()}")
    amps = torch.as_tensor(harmonics, dtype=torch.float64)
    if amps.ndim != 1 or len(amps) == 0 or (amps < 0).any() or not (amps > 0).any():
        raise ValueError(f"harmonics must be a non-empty 1-D sequence of amplitudes >= 0, got {amps.tolist()}")
    top = len(amps) * pitches.max().item()
    if top >= sample_rate / 2:
        raise ValueError(f"the top harmonic {len(amps)} x {pitches.max().item():.1f} Hz = {top:.1f} Hz must lie "
                         f"below the Nyquist frequency sample_rate / 2 = {sample_rate / 2:g} Hz (sample_rate="
                         f"{sample_rate}): raise sample_rate or use fewer harmonics")
    if not (isinstance(noise, (int, float)) and noise >= 0):
        raise ValueError(f"noise must be a standard deviation >= 0, got {noise!r}")
    if labels is None:
        labels = torch.randint(len(pitches), (n,), generator=generator)
    elif not (torch.is_tensor(labels) and labels.shape == (n,) and labels.dtype == torch.long
              and labels.min() >= 0 and labels.max() < len(pitches)):
        raise ValueError(f"labels must be a ({n},) long tensor of indices in 0..{len(pitches) - 1}, got {labels!r:.80}")

    def uniform(lo, hi, *shape):
        return lo + (hi - lo) * torch.rand(*shape, generator=generator, dtype=torch.float64)

    s = torch.arange(L, dtype=torch.float64) / sample_rate  # (L,) seconds
    f = pitches[labels][:, None, None]  # (n, 1, 1)
    k = torch.arange(1, len(amps) + 1, dtype=torch.float64)[None, :, None]  # (1, K, 1)
    phase = uniform(0, 2 * math.pi, n, len(amps), 1)  # (n, K, 1)
    tone = (amps[None, :, None] * torch.sin(2 * math.pi * k * f * s + phase)).sum(1)  # (n, L)
    tone = tone / tone.abs().amax(1, keepdim=True)  # peak 1 before the envelope
    attack = min(0.01, duration / 4)
    decay = uniform(0.5, 1.5, n, 1) * duration  # (n, 1) time constants
    env = torch.clamp(s / attack, max=1.0) * torch.exp(-torch.clamp(s - attack, min=0.0) / decay)  # (n, L)
    loud = uniform(0.5, 0.9, n, 1)
    x = loud * env * tone + noise * torch.randn(n, L, generator=generator, dtype=torch.float64)
    return x.clamp(-1, 1).float()[:, None, :], labels  # (n, 1, L), (n,)


def estimate_pitch(
    waves: torch.Tensor, sample_rate: int, *, fmin: float | None = None, fmax: float | None = None,
    harmonics: int = 1, oversample: int = 8,
) -> torch.Tensor:
    """The fundamental frequency (Hz) of each wave ``(B, 1, L)``: ``(B,)`` float64.

    The peak of the Hann-windowed magnitude spectrum (zero-padded to ``oversample`` times the next
    power of two of ``L``), or of the harmonic product spectrum of ``harmonics`` terms, searched
    in ``[fmin, fmax]`` (default: from one bin above 0 Hz to the Nyquist frequency divided by
    ``harmonics``), refined by quadratic interpolation of the log-magnitude (module docstring).

    Examples
    --------
    >>> r = 4000
    >>> s = torch.arange(512) / r
    >>> wave = torch.sin(2 * math.pi * 300.0 * s).view(1, 1, -1)
    >>> round(estimate_pitch(wave, r).item(), 1)
    300.0
    """
    x = _check_waves(waves)
    _check_rate(sample_rate)
    if isinstance(harmonics, bool) or not isinstance(harmonics, int) or harmonics < 1:
        raise ValueError(f"harmonics must be an int >= 1, got {harmonics!r}")
    if isinstance(oversample, bool) or not isinstance(oversample, int) or oversample < 1:
        raise ValueError(f"oversample must be an int >= 1, got {oversample!r}")
    B, _, L = x.shape
    n_fft = oversample * 2 ** math.ceil(math.log2(L))
    df = sample_rate / n_fft  # Hz per bin
    nyquist = sample_rate / 2
    lo = 2 * df if fmin is None else float(fmin)
    hi = nyquist / harmonics if fmax is None else float(fmax)
    if not 0 < lo < hi <= nyquist / harmonics:
        raise ValueError(f"need 0 < fmin < fmax <= sample_rate / (2 harmonics) = {nyquist / harmonics:g} Hz, "
                         f"got fmin={fmin!r}, fmax={fmax!r}")
    window = torch.hann_window(L, periodic=False, dtype=torch.float64, device=x.device)
    mag = torch.fft.rfft(x[:, 0].double() * window, n=n_fft).abs()  # (B, n_fft / 2 + 1)
    logmag = torch.log(mag + 1e-12)
    n_bins = n_fft // (2 * harmonics) + 1  # bins k whose multiples h k stay below Nyquist
    spec = sum(logmag[:, : h * (n_bins - 1) + 1 : h] for h in range(1, harmonics + 1))  # (B, n_bins) log HPS
    k_lo, k_hi = max(1, math.ceil(lo / df)), min(n_bins - 2, math.floor(hi / df))
    if k_hi < k_lo:
        raise ValueError(f"[fmin, fmax] = [{lo:g}, {hi:g}] Hz holds no frequency bin (bins are {df:g} Hz apart)")
    k = k_lo + spec[:, k_lo : k_hi + 1].argmax(1)  # (B,) peak bin
    a, b, c = (spec.gather(1, (k + d)[:, None])[:, 0] for d in (-1, 0, 1))
    denom = a - 2 * b + c
    shift = torch.where(denom < 0, 0.5 * (a - c) / denom.where(denom < 0, torch.ones_like(denom)), 0.0)
    return (k + shift.clamp(-0.5, 0.5)) * df  # (B,) Hz


def spectrogram(waves: torch.Tensor, n_fft: int = 64, hop: int = 16, *, eps: float = 1e-4) -> torch.Tensor:
    """Log-magnitude spectrogram ``log(|STFT| + eps)`` of waves ``(B, 1, L)``:
    ``(B, n_fft // 2 + 1, frames)``, frequencies ``k sample_rate / n_fft`` for ``k = 0 .. n_fft/2``,
    frame ``m`` centred on sample ``m hop`` (``torch.stft`` with a Hann window, ``center=True``).

    Examples
    --------
    >>> spectrogram(torch.zeros(2, 1, 512), n_fft=64, hop=16).shape
    torch.Size([2, 33, 33])
    """
    x = _check_waves(waves)
    for name, v in (("n_fft", n_fft), ("hop", hop)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if n_fft < 2 or n_fft > x.shape[-1]:
        raise ValueError(f"n_fft must lie in [2, L] = [2, {x.shape[-1]}], got {n_fft}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    stft = torch.stft(x[:, 0], n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    return torch.log(stft.abs() + eps)  # (B, n_fft // 2 + 1, frames)


def cents(f: torch.Tensor, f_ref: torch.Tensor | float) -> torch.Tensor:
    """The interval from ``f_ref`` to ``f`` in cents, ``1200 log2(f / f_ref)`` (100 = a semitone).

    Examples
    --------
    >>> cents(torch.tensor([440.0, 880.0]), 440.0).tolist()
    [0.0, 1200.0]
    """
    f, f_ref = torch.as_tensor(f, dtype=torch.float64), torch.as_tensor(f_ref, dtype=torch.float64)
    if (f <= 0).any() or (f_ref <= 0).any():
        raise ValueError("f and f_ref must be positive frequencies (Hz)")
    return 1200 * torch.log2(f / f_ref)


def nearest_pitch(f: torch.Tensor, pitches: Sequence[float] = C_MAJOR) -> torch.Tensor:
    """Index ``(B,)`` of the pitch in ``pitches`` nearest to each frequency of ``f`` ``(B,)`` in cents.

    Examples
    --------
    >>> nearest_pitch(torch.tensor([131.0, 260.0, 165.0])).tolist()   # C3, C4, E3
    [0, 7, 2]
    """
    p = torch.as_tensor(pitches, dtype=torch.float64)
    if p.ndim != 1 or len(p) == 0:
        raise ValueError(f"pitches must be a non-empty 1-D sequence of frequencies, got {p.tolist()}")
    return cents(torch.as_tensor(f, dtype=torch.float64)[:, None], p[None, :]).abs().argmin(1)


def resample(waves: torch.Tensor, sample_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited upsampling of waves ``(B, 1, L)`` from ``sample_rate`` to ``new_rate >= sample_rate``
    Hz by zero-padding the spectrum: ``(B, 1, round(L new_rate / sample_rate))``. Exact for a periodic
    band-limited signal; used here to play 2 kHz notes at a rate every browser accepts.

    Examples
    --------
    >>> x = torch.sin(2 * math.pi * 5 * torch.arange(40) / 40).view(1, 1, -1)   # 5 periods
    >>> y = resample(x, 40, 80)
    >>> y.shape, bool(torch.allclose(y[..., ::2], x, atol=1e-5))
    (torch.Size([1, 1, 80]), True)
    """
    x = _check_waves(waves)
    _check_rate(sample_rate, "sample_rate")
    _check_rate(new_rate, "new_rate")
    if new_rate < sample_rate:
        raise ValueError(f"new_rate must be >= sample_rate = {sample_rate} (upsampling only), got {new_rate!r}")
    L = x.shape[-1]
    M = round(L * new_rate / sample_rate)
    X = torch.fft.rfft(x.double(), dim=-1)  # (B, 1, L // 2 + 1)
    Y = torch.zeros(*X.shape[:-1], M // 2 + 1, dtype=X.dtype, device=X.device)  # (B, 1, M // 2 + 1)
    Y[..., : L // 2 + 1] = X
    if L % 2 == 0 and M > L:  # the old Nyquist bin stands for +L/2 and -L/2: split it between them
        Y[..., L // 2] *= 0.5
    return (torch.fft.irfft(Y, n=M, dim=-1) * (M / L)).to(x.dtype)  # (B, 1, M)


def _check_waves(waves) -> torch.Tensor:
    if not torch.is_tensor(waves) or waves.ndim != 3 or waves.shape[1] != 1:
        got = f"shape {tuple(waves.shape)}" if torch.is_tensor(waves) else type(waves).__name__
        raise ValueError(f"waves must be a tensor of shape (B, 1, L), got {got}")
    if waves.shape[0] == 0 or waves.shape[-1] < 2:
        raise ValueError(f"waves must hold at least one wave of at least 2 samples, got shape {tuple(waves.shape)}")
    if not waves.is_floating_point() or not torch.isfinite(waves).all():
        raise ValueError("waves must be a finite floating-point tensor")
    return waves


def _check_rate(rate, name: str = "sample_rate") -> None:
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"{name} must be a positive number of samples per second, got {rate!r}")
