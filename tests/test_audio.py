"""Audio made in code (diffusion_edu.audio) and the DiffWave-style denoiser (nets.wavenet), each
checked against an independent computation: numpy's FFT for the spectra and the spectrogram, the
synthesised frequency for the pitch estimator, analytic sines for resampling, a hand-written gated
layer and the Jacobian's support for the network."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_edu import training
from diffusion_edu.audio import (C_MAJOR, cents, estimate_pitch, make_notes, midi_to_hz, nearest_pitch, resample,
                                 spectrogram)
from diffusion_edu.denoiser import Denoiser
from diffusion_edu.losses import ddpm_loss
from diffusion_edu.nets.wavenet import DiffWave
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas

R = 2000  # the default sample rate


def sines(freqs, L=256, rate=R, phase=None, amps=(1.0,)):
    """Sums of harmonics ``sum_k a_k sin(2 pi k f n / r + phase)``, ``(B, 1, L)`` float64."""
    f = torch.as_tensor(freqs, dtype=torch.float64)[:, None]
    n = torch.arange(L, dtype=torch.float64)[None, :]
    phase = torch.zeros_like(f) if phase is None else phase
    x = sum(a * torch.sin(2 * math.pi * (k + 1) * f * n / rate + phase) for k, a in enumerate(amps))
    return x[:, None, :]


# -- the data ---------------------------------------------------------------------------------
def test_make_notes_shapes_range_labels_and_determinism(gen):
    x, y = make_notes(4000, generator=gen)
    assert x.shape == (4000, 1, 256) and x.dtype == torch.float32 and y.shape == (4000,)
    assert x.abs().max() <= 1 and x.abs().max() > 0.5  # peaks drawn from [0.5, 0.9] plus a little noise
    counts = torch.bincount(y, minlength=len(C_MAJOR)).double() / 4000
    # uniform labels: each frequency 1/8 +- 4 binomial standard deviations sqrt(p (1 - p) / n) = 0.0052
    assert (counts - 1 / 8).abs().max() < 4 * math.sqrt(1 / 8 * 7 / 8 / 4000)
    x2, y2 = make_notes(4000, generator=torch.Generator().manual_seed(1234))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    given = torch.arange(8)
    assert torch.equal(make_notes(8, labels=given, generator=gen)[1], given)


def test_make_notes_spectrum_has_the_pitch_and_the_harmonic_amplitudes(gen):
    """numpy's FFT of each noiseless note: its loudest bin is the synthesised fundamental, and the
    peaks at 2f and 3f stand to it as the harmonic amplitudes 0.5 and 0.25 (the envelope multiplies
    every harmonic alike, so the Hann-windowed peak heights keep their ratios up to leakage)."""
    x, y = make_notes(200, noise=0.0, generator=gen)
    X = np.abs(np.fft.rfft(x[:, 0].double().numpy() * np.hanning(256), n=256 * 16, axis=1))  # (200, 2049)
    df = R / (256 * 16)
    f = np.array(C_MAJOR)[y.numpy()]
    peak = X.argmax(1) * df
    assert np.abs(peak - f).max() < df  # the loudest bin is the fundamental, to one bin
    for k, h in ((2, 0.5), (3, 0.25)):
        near = lambda fk: X[np.arange(200)[:, None], np.round(fk[:, None] / df).astype(int) + np.arange(-3, 4)].max(1)
        ratio = near(k * f) / near(f)
            # harmonics 130 Hz (133 bins of 16x zero-padding) apart barely leak into each other's Hann main lobe:
        # measured |ratio - h| < 0.0005 (seeds 0-2); a wrong amplitude, e.g. 1/k^2 = 0.25 for k = 2, fails
        assert np.abs(ratio - h).max() < 0.01, (k, ratio.min(), ratio.max())


def test_midi_to_hz_and_the_scale():
    assert midi_to_hz(69) == [440.0]
    assert len(C_MAJOR) == 8 and abs(C_MAJOR[-1] / C_MAJOR[0] - 2) < 1e-12  # one octave, C3 to C4
    steps = cents(torch.tensor(C_MAJOR[1:]), torch.tensor(C_MAJOR[:-1])).round()
    assert steps.tolist() == [200, 200, 100, 200, 200, 200, 100]  # whole, whole, half, whole, whole, whole, half


# -- pitch --------------------------------------------------------------------------------------
def test_estimate_pitch_matches_the_synthesised_frequency(gen):
    """Random frequencies between bins, random phases: the bins are df = r / n_fft = 2000 / 2048 Hz
    apart, so taking the peak bin alone errs by up to df / 2 = 0.49 Hz; quadratic interpolation of
    the log-magnitude of a Hann window leaves a small bias (measured max 0.0004 bins on pure sines,
    seeds 0-2), so 0.05 df would fail without the interpolation."""
    f = 120 + 150 * torch.rand(500, generator=gen, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(500, 1, generator=gen, dtype=torch.float64)
    x = sines(f, phase=phase)
    df = R / 2048
    err = (estimate_pitch(x, R) - f).abs()
    assert err.max() < 0.05 * df, err.max()
    # on the notes of make_notes the decaying envelope and the noise add a little: measured max 0.094 bins
    # (seeds 0-2); a quarter of a bin is 3.2 cents at C3, half of what the peak bin alone guarantees
    notes, y = make_notes(500, generator=gen)
    truth = torch.tensor(C_MAJOR, dtype=torch.float64)[y]
    assert (estimate_pitch(notes, R) - truth).abs().max() < 0.25 * df
    assert torch.equal(nearest_pitch(estimate_pitch(notes, R)), y)


def test_harmonic_product_spectrum_avoids_the_octave_error():
    """A note whose second harmonic is louder than its fundamental: the plain spectral peak lies at
    2 f (an octave too high); the product of the spectrum at f, 2 f and 3 f peaks at f."""
    f = torch.tensor([140.0, 180.0, 230.0], dtype=torch.float64)
    x = sines(f, amps=(0.3, 1.0, 0.6))
    assert torch.allclose(estimate_pitch(x, R), 2 * f, atol=0.1)
    assert torch.allclose(estimate_pitch(x, R, harmonics=3), f, atol=0.1)
    assert torch.allclose(estimate_pitch(x, R, fmin=100, fmax=250), f, atol=0.1)  # or: search below the octave


def test_cents_and_nearest_pitch():
    assert torch.allclose(cents(torch.tensor([220.0, 440.0 * 2 ** (1 / 12)]), 440.0),
                          torch.tensor([-1200.0, 100.0], dtype=torch.float64))
    f = torch.tensor(C_MAJOR, dtype=torch.float64) * 2 ** (40 / 1200)  # 40 cents sharp: still the same note
    assert nearest_pitch(f).tolist() == list(range(8))


# -- spectrogram and resampling ----------------------------------------------------------------
def test_spectrogram_equals_a_numpy_stft(gen):
    x, _ = make_notes(3, generator=gen)
    n_fft, hop = 64, 16
    S = spectrogram(x, n_fft, hop)
    xp = np.pad(x[:, 0].numpy().astype(np.float64), ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann (torch's default)
    frames = np.stack([xp[:, m * hop : m * hop + n_fft] for m in range(1 + 256 // hop)], 1)  # (3, M, n_fft)
    ref = np.log(np.abs(np.fft.rfft(frames * window, axis=-1)) + 1e-4).transpose(0, 2, 1)  # (3, F, M)
    assert S.shape == ref.shape == (3, n_fft // 2 + 1, 1 + 256 // hop)
    np.testing.assert_allclose(S.double().numpy(), ref, atol=2e-4)


def test_resample_reproduces_band_limited_signals(gen):
    # a sine with a whole number of periods is band-limited and periodic: exact at the new rate
    L, cycles = 200, torch.tensor([3.0, 17.0, 40.0], dtype=torch.float64)
    x = sines(cycles * R / L, L=L)
    y = resample(x.float(), R, 8000)
    assert y.shape == (3, 1, 800)
    assert torch.allclose(y.double(), sines(cycles * R / L, L=800, rate=8000), atol=1e-5)
    # upsampling by an integer factor keeps every old sample, the Nyquist bin included (split in two)
    z = torch.randn(4, 1, 64, generator=gen)
    assert torch.allclose(resample(z, 2000, 6000)[..., ::3], z, atol=1e-5)


# -- bad input ----------------------------------------------------------------------------------
W = torch.zeros(2, 1, 64)
BAD = {
    "make_notes n = 0": (lambda: make_notes(0), "n must be a positive int"),
    "make_notes rate 0": (lambda: make_notes(4, sample_rate=0), "sample_rate must be a positive number"),
    "make_notes negative duration": (lambda: make_notes(4, duration=-0.1), "duration must be a positive"),
    "make_notes empty pitches": (lambda: make_notes(4, pitches=[]), "pitches must be a non-empty"),
    "make_notes negative pitch": (lambda: make_notes(4, pitches=[-200.0]), "pitches must be a non-empty"),
    "make_notes above Nyquist": (lambda: make_notes(4, sample_rate=1000), "below the Nyquist frequency"),
    "make_notes bad labels": (lambda: make_notes(2, labels=torch.tensor([0, 8])), "labels must be a (2,) long"),
    "estimate_pitch rank 2": (lambda: estimate_pitch(torch.zeros(2, 64), R),
                              "waves must be a tensor of shape (B, 1, L)"),
    "estimate_pitch two channels": (lambda: estimate_pitch(torch.zeros(2, 2, 64), R), "waves must be a tensor"),
    "estimate_pitch empty batch": (lambda: estimate_pitch(torch.zeros(0, 1, 64), R), "at least one wave"),
    "estimate_pitch rate < 0": (lambda: estimate_pitch(W, -5), "sample_rate must be a positive number"),
    "estimate_pitch fmax > Nyquist": (lambda: estimate_pitch(W, R, fmax=1500.0), "fmax <= sample_rate"),
    "estimate_pitch harmonics 0": (lambda: estimate_pitch(W, R, harmonics=0), "harmonics must be an int >= 1"),
    "estimate_pitch NaN": (lambda: estimate_pitch(W + float("nan"), R), "waves must be a finite"),
    "spectrogram rank 4": (lambda: spectrogram(torch.zeros(2, 1, 1, 64)), "waves must be a tensor of shape"),
    "spectrogram n_fft > L": (lambda: spectrogram(W, n_fft=128), "n_fft must lie in [2, L]"),
    "spectrogram hop 0": (lambda: spectrogram(W, hop=0), "hop must be a positive int"),
    "resample downsampling": (lambda: resample(W, 2000, 1000), "new_rate must be >= sample_rate"),
    "resample rate 0": (lambda: resample(W, 0, 1000), "sample_rate must be a positive number"),
    "cents of 0 Hz": (lambda: cents(torch.tensor([0.0]), 440.0), "f and f_ref must be positive"),
    "DiffWave layers 0": (lambda: DiffWave(layers=0), "layers must be a positive int"),
    "DiffWave even kernel": (lambda: DiffWave(kernel_size=4), "kernel_size must be odd"),
    "DiffWave num_classes 0": (lambda: DiffWave(num_classes=0), "num_classes must be None or a positive int"),
    "DiffWave odd emb_dim": (lambda: DiffWave(emb_dim=15), "emb_dim must be an even int"),
    "DiffWave x rank 2": (lambda: DiffWave(channels=4, layers=2)(torch.zeros(2, 64), 0.0),
                          "x must have shape (B, 1, L)"),
    "DiffWave x rank 4": (lambda: DiffWave(channels=4, layers=2)(torch.zeros(2, 1, 8, 8), 0.0), "x must have shape"),
    "DiffWave t shape": (lambda: DiffWave(channels=4, layers=2)(W, torch.zeros(3)),
                         "t must be a float or have shape (2,)"),
    "DiffWave y unconditional": (lambda: DiffWave(channels=4, layers=2)(W, 0.0, torch.zeros(2, dtype=torch.long)),
                                 "this DiffWave is unconditional"),
    "DiffWave y out of range": (lambda: DiffWave(channels=4, layers=2, num_classes=3)(W, 0.0, torch.tensor([0, 4])),
                                "y must be a (2,) long tensor of labels in 0..3"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_names_the_argument(case):
    fn, message = BAD[case]
    with pytest.raises(ValueError) as info:
        fn()
    assert message in str(info.value), str(info.value)


# -- the network --------------------------------------------------------------------------------
def _randomise(net, gen):
    """Random weights everywhere (the last layer starts at zero, which would hide every path)."""
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return net


def test_residual_layer_equals_the_gated_equation(gen):
    """The layer against the equation written out with F.conv1d: z = conv_d(h + W_t emb) + W_y e_y,
    a = tanh(z_filter) sigmoid(z_gate), (res, skip) = Conv1x1(a), output ((h + res) / sqrt 2, skip)."""
    net = _randomise(DiffWave(channels=6, layers=3, num_classes=4, emb_dim=8), gen)
    layer, d = net.layers[2], net.dilations[2]
    h = torch.randn(2, 6, 50, generator=gen)
    emb, lab = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    u = h + (emb @ layer.t_proj.weight.T + layer.t_proj.bias)[:, :, None]
    z = F.conv1d(F.pad(u, (d, d)), layer.dilated.weight, layer.dilated.bias, dilation=d)
    z = z + (lab @ layer.y_proj.weight.T + layer.y_proj.bias)[:, :, None]
    a = torch.tanh(z[:, :6]) * torch.sigmoid(z[:, 6:])
    o = torch.einsum("oc,bcl->bol", layer.out.weight[:, :, 0], a) + layer.out.bias[:, None]
    new_h, skip = layer(h, emb, lab)
    assert torch.allclose(new_h, (h + o[:, :6]) / math.sqrt(2), atol=1e-5)
    assert torch.allclose(skip, o[:, 6:], atol=1e-5)


def test_receptive_field_is_the_support_of_the_jacobian(gen):
    """Output sample q depends on input sample p exactly when |p - q| <= (receptive_field - 1) / 2:
    with dilations 1, 2, 4, 1, 2 and kernel 3 that is 1 + 2 * 10 = 21 samples."""
    net = _randomise(DiffWave(channels=4, layers=5, dilation_cycle=3), gen).double()
    assert net.dilations == [1, 2, 4, 1, 2] and net.receptive_field == 21
    # four inputs, so that no ReLU hides a sample from all of them
    x = torch.randn(4, 1, 61, generator=gen, dtype=torch.float64, requires_grad=True)
    q = 30
    (grad,) = torch.autograd.grad(net(x, 5.0)[:, 0, q].sum(), x)  # row b: d out[b, q] / d x[b, :]
    support = (grad[:, 0].abs().sum(0) > 0).nonzero()[:, 0]
    assert support.min().item() == q - 10 and support.max().item() == q + 10


def test_labels_the_null_label_and_the_time_change_the_output(gen):
    net = _randomise(DiffWave(channels=8, layers=3, num_classes=5), gen)
    x = torch.randn(3, 1, 40, generator=gen)
    y = torch.tensor([0, 2, 4])
    assert torch.equal(net(x, 10.0), net(x, 10.0, torch.full((3,), net.null_label)))  # no labels = null label
    assert (net(x, 10.0, y) - net(x, 10.0)).abs().max() > 1e-3
    assert (net(x, 10.0, y) - net(x, 900.0, y)).abs().max() > 1e-3
    assert torch.allclose(net(x[1:2], 10.0, y[1:2]), net(x, 10.0, y)[1:2], atol=1e-6)  # examples are independent
    assert torch.equal(DiffWave(channels=8, layers=3)(x, 3.0), torch.zeros_like(x))  # the last layer starts at 0


def test_save_load_round_trip(tmp_path, monkeypatch, gen):
    monkeypatch.setitem(training.MODEL_CLASSES, "DiffWave", DiffWave)
    net = _randomise(DiffWave(channels=8, layers=4, num_classes=8, t_scale=20.0), gen)
    training.save_model(net, tmp_path / "diffwave.pt")
    back = training.load_model(tmp_path / "diffwave.pt")
    x, y = torch.randn(2, 1, 32, generator=gen), torch.tensor([1, 7])
    assert back.config == net.config and torch.equal(back(x, 3.0, y), net(x, 3.0, y))


def test_trains_with_the_library_loss_through_the_denoiser(gen):
    """A few Adam steps of ddpm_loss (v-prediction, labels dropped for guidance) on notes lower the
    loss from its starting value (the zero output of the untrained net scores E||v||^2 / D, measured 0.53)
    to < 0.8 of it (measured 0.56-0.59 of it, seeds 0-2); then a Denoiser wraps the net."""
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(1000, "cosine")))
    x, y = make_notes(64, duration=0.032, generator=gen)  # 64 samples
    net = DiffWave(channels=8, layers=4, num_classes=8)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    g_eval = lambda: torch.Generator().manual_seed(99)  # the same noise and times for both evaluations

    def loss(gen_):
        return ddpm_loss(net, x, sched, prediction="v", generator=gen_, y=y, label_dropout=0.2,
                         null_label=net.null_label)

    with torch.no_grad():
        before = loss(g_eval()).item()
    for _ in range(60):
        opt.zero_grad()
        loss(gen).backward()
        opt.step()
    with torch.no_grad():
        after = loss(g_eval()).item()
    assert after < 0.8 * before, (before, after)
    den = Denoiser(net, sched, "v", y=y)
    assert den.x0(torch.randn(64, 1, 64, generator=gen), 500.0).shape == (64, 1, 64)
