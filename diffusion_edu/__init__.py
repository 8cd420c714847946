"""diffusion_edu: a small, readable PyTorch reference library for the textbook
"Diffusion Models -- the frontier of generative AI".

One notation everywhere: ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``eps ~ N(0, I)``;
tensors are ``(B, *dims)``; every network is called as ``net(x, t)``.
"""

from .data import load_digits
from .flow_matching import StraightPath, cfm_loss, integrate_flow
from .likelihood import bits_per_dim, ddpm_elbo, log_likelihood
from .losses import ddpm_loss, drop_labels, dsm_loss
from .samplers import ddim, ddpm_ancestral, euler_maruyama, predictor_corrector, probability_flow
from .schedules import alphas_cumprod, ddim_timesteps, ddpm_betas, uniform_times
from .sde import SDE, VESDE, VPSDE, BrownianSDE, SubVPSDE
from .toy import GaussianMixture, checkerboard, eight_gaussians, eight_gaussians_mixture, swiss_roll, two_moons
from .train import EMA, load_model, save_model, train
from .transport import gaussian_w2, ot_pairs, sinkhorn_w2, sliced_w2, w2
from .utils import append_dims, budget, default_device, seed
from .nets import Classifier, TimeMLP, UNet
from .vae import VAE
from .vdm import LearnedSchedule, vdm_loss

__version__ = "0.1.0"

__all__ = [
    "SDE", "BrownianSDE", "VESDE", "VPSDE", "SubVPSDE",
    "GaussianMixture", "eight_gaussians_mixture", "two_moons", "swiss_roll", "checkerboard",
    "eight_gaussians",
    "ddpm_betas", "alphas_cumprod", "uniform_times", "ddim_timesteps",
    "dsm_loss", "ddpm_loss",
    "euler_maruyama", "probability_flow", "predictor_corrector", "ddpm_ancestral", "ddim",
    "w2", "TimeMLP", "EMA", "train", "save_model", "load_model",
    "append_dims", "budget", "default_device", "seed",
    "VAE", "log_likelihood", "ddpm_elbo", "bits_per_dim", "load_digits", "LearnedSchedule", "vdm_loss",
    "cfm_loss", "integrate_flow", "StraightPath", "ot_pairs", "sinkhorn_w2", "sliced_w2", "gaussian_w2",
    "UNet", "Classifier", "drop_labels",
]
