"""Every public function checks what its equation assumes: a variance is positive, discrete data
lie in their value range, a number of levels is at least two, a time lies in the schedule's
range, labels index a class. Each case below once returned a silent wrong answer (NaN, inf, an
empty tensor, a plausible number) or raised torch's or Python's internal error; now each raises a
``ValueError`` that names the argument."""

import pytest
import torch

from diffusion_edu.likelihood import (bits_per_dim, dequantize, discretized_gaussian_log_likelihood, elbo_weights,
                                      normal_kl)
from diffusion_edu.losses import dsm_loss, sample_times
from diffusion_edu.metrics import classifier_accuracy
from diffusion_edu.schedules import alphas_cumprod, ddpm_betas
from diffusion_edu.sde import VESDE, VPSDE, BrownianSDE, SubVPSDE
from diffusion_edu.toy import checkerboard
from diffusion_edu.utils import as_batch_time

Z = torch.zeros(2, 3)
CASES = {
    "normal_kl negative variance": (lambda: normal_kl(0.0, -1.0, 0.0, 1.0), "var1 must be a variance > 0"),
    "normal_kl zero variance": (lambda: normal_kl(0.0, 1.0, 0.0, 0.0), "var2 must be a variance > 0"),
    "discretized std <= 0": (lambda: discretized_gaussian_log_likelihood(Z, Z, 0.0), "std must be > 0"),
    "discretized x outside the range": (lambda: discretized_gaussian_log_likelihood(Z + 3, Z, 1.0),
                                        "x must lie in value_range"),
    "discretized one level": (lambda: discretized_gaussian_log_likelihood(Z, Z, 1.0, levels=1),
                              "levels must be an int >= 2"),
    "discretized mean shape": (lambda: discretized_gaussian_log_likelihood(Z, Z[:1], 1.0), "mean of the same shape"),
    "bits_per_dim levels 0": (lambda: bits_per_dim(torch.zeros(2), Z, levels=0), "levels must be an int >= 2"),
    "bits_per_dim reversed range": (lambda: bits_per_dim(torch.zeros(2), Z, value_range=(1, -1)), "lo < hi"),
    "dequantize one level": (lambda: dequantize(Z, levels=1), "levels must be an int >= 2"),
    "dequantize data outside the range": (lambda: dequantize(Z + 5), "x must lie in value_range"),
    "elbo_weights unknown variance": (lambda: elbo_weights(alphas_cumprod(ddpm_betas(10)), "sigma"),
                                      "variance must be 'beta' or 'beta_tilde'"),
    "dsm_loss negative t_eps": (lambda: dsm_loss(lambda x, t: x, Z, VPSDE(), t_eps=-1.0), "t_eps must be in"),
    "sample_times t_eps past T": (lambda: sample_times(VPSDE(), 4, t_eps=2.0), "t_eps must be in"),
    "sample_times empty batch": (lambda: sample_times(VPSDE(), 0), "batch must be an int >= 1"),
    "classifier_accuracy label out of range": (lambda: classifier_accuracy(torch.randn(5, 3), torch.full((5,), 7)),
                                               "labels must be class indices"),
    "VPSDE T = 0": (lambda: VPSDE(T=0.0), "T must be a finite number > 0"),
    "SubVPSDE T = inf": (lambda: SubVPSDE(T=float("inf")), "T must be a finite number > 0"),
    "VESDE T < 0": (lambda: VESDE(T=-1.0), "T must be a finite number > 0"),
    "BrownianSDE T = 0": (lambda: BrownianSDE(0.0), "T must be a finite number > 0"),
    "checkerboard odd size": (lambda: checkerboard(10, size=3), "size must be an even int"),
    "checkerboard size 0": (lambda: checkerboard(10, size=0), "size must be an even int"),
    "as_batch_time NaN": (lambda: as_batch_time(float("nan"), 3), "t must be finite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_a_named_value_error(case):
    call, message = CASES[case]
    with pytest.raises(ValueError, match=message):
        call()


def test_good_input_still_passes():
    """The checks reject only what the equations exclude: the boundary values are accepted."""
    x = torch.tensor([[-1.0, 1.0]])  # both ends of the value range
    assert torch.isfinite(discretized_gaussian_log_likelihood(x, x, 0.1, levels=2)).all()
    assert dequantize(x, levels=2).shape == x.shape
    assert float(normal_kl(0.0, 1.0, 0.0, 1.0)) == 0.0
    assert sample_times(VPSDE(), 3, t_eps=0.0).shape == (3,)
    assert classifier_accuracy(torch.eye(3), torch.arange(3)) == 1.0


# -- property tests (hypothesis): the checks hold for every bad value, not only the ones above --
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from diffusion_edu.toy import GaussianMixture  # noqa: E402

finite = st.floats(-1e3, 1e3, allow_nan=False)
positive = st.floats(1e-6, 1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(m1=finite, m2=finite, v1=positive, v2=positive, bad=st.floats(-1e3, 0.0))
def test_normal_kl_is_a_divergence_and_rejects_non_variances(m1, m2, v1, v2, bad):
    kl = float(normal_kl(m1, v1, m2, v2))
    assert kl >= -1e-9 * (1 + abs(kl))  # Gibbs' inequality, up to round-off
    assert float(normal_kl(m1, v1, m1, v1)) == 0.0
    with pytest.raises(ValueError, match="var1"):
        normal_kl(m1, bad, m2, v2)
    with pytest.raises(ValueError, match="var2"):
        normal_kl(m1, v1, m2, bad)


@settings(max_examples=40, deadline=None)
@given(levels=st.integers(2, 256), lo=st.floats(-5, 0), width=st.floats(0.1, 10), out=st.floats(1e-3, 10),
       above=st.booleans())
def test_discrete_data_outside_the_value_range_are_rejected(levels, lo, width, out, above):
    hi = lo + width
    inside = torch.tensor([[lo, hi]], dtype=torch.float64)
    y = dequantize(inside, levels=levels, value_range=(lo, hi))
    assert ((y - inside).abs() <= width / (levels - 1) / 2 + 1e-12).all()  # within half a bin
    bad = torch.tensor([[hi + out if above else lo - out, lo]], dtype=torch.float64)
    with pytest.raises(ValueError, match="x must lie in value_range"):
        dequantize(bad, levels=levels, value_range=(lo, hi))
    with pytest.raises(ValueError, match="x must lie in value_range"):
        discretized_gaussian_log_likelihood(bad, bad, 1.0, levels=levels, value_range=(lo, hi))


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.1, 3), b=st.floats(0.1, 3), c=st.floats(-5, 5))
def test_gaussian_mixture_accepts_exactly_the_covariances(a, b, c):
    """A symmetric 2x2 matrix [[a, c], [c, b]] is a (positive-definite) covariance iff ab > c^2."""
    cov = [[a, c], [c, b]]
    margin = a * b - c * c
    if margin > 1e-6 * (a * b + c * c):
        assert GaussianMixture([[0.0, 0.0]], covs=cov).cov().shape == (2, 2)
    elif margin < -1e-6 * (a * b + c * c):
        with pytest.raises(ValueError, match="covs must be positive definite"):
            GaussianMixture([[0.0, 0.0]], covs=cov)
    with pytest.raises(ValueError, match="covs must be symmetric"):
        GaussianMixture([[0.0, 0.0]], covs=[[a, c + 1.0], [c, b]])


def test_a_file_that_is_not_a_cifar_batch_is_named(tmp_path):
    from diffusion_edu.data import read_cifar10_batch

    for name, content in (("text", b"# a README, not a pickle\n"), ("empty", b""), ("truncated", b"\x80\x04\x95")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=f"{name}: not a CIFAR-10 python batch"):
            read_cifar10_batch(path)


def test_dsm_loss_keeps_the_precision_of_the_data():
    """A float32 batch gives a float32 loss (the float64 schedule coefficients used to promote it)
    equal to the float64 computation to float32 round-off; a float64 batch stays float64."""
    x0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    net = lambda x, t: 0.5 * x  # noqa: E731
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    l32 = dsm_loss(net, x0, VPSDE(), t=t, noise=noise)
    l64 = dsm_loss(net, x0.double(), VPSDE(), t=t, noise=noise.double())
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    assert abs(float(l32) - float(l64)) <= 1e-5 * float(l64)


def test_get_loss_is_dsm_loss_by_name():
    from diffusion_edu.losses import get_loss

    x0 = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    net = lambda x, t: 0.3 * x  # noqa: E731
    t = torch.rand(16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.9 + 0.05
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(2))
    for prediction, weighting in (("eps", None), ("v", "likelihood"), ("x0", "eps")):
        got = get_loss(prediction, weighting)(net, x0, VPSDE(), t=t, noise=noise)
        want = dsm_loss(net, x0, VPSDE(), prediction=prediction, weighting=weighting, t=t, noise=noise)
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="prediction must be one of"):
        get_loss("noise")
    with pytest.raises(ValueError, match="weighting must be one of"):
        get_loss("eps", "snr")
    with pytest.raises(ValueError, match="prediction is fixed by get_loss"):
        get_loss("eps")(net, x0, VPSDE(), prediction="v")
