"""diffusion_edu: a small, readable PyTorch reference library for the textbook
"Diffusion Models -- the frontier of generative AI".

One notation everywhere: ``x_t = alpha(t) x0 + sigma(t) eps`` with ``eps ~ N(0, I)``, ``t = 0``
the data and larger ``t`` noisier; tensors are ``(B, *dims)``; every network is called as
``net(x, t)`` and adapted once by ``Denoiser(net, schedule, prediction)``, which every sampler,
guidance method and likelihood takes.
"""

from .data import load_digits
from .denoiser import Denoiser, clip_x0
from .flow_matching import StraightPath, cfm_loss
from .likelihood import bits_per_dim, ddpm_elbo, log_likelihood
from .losses import ddpm_loss, drop_labels, dsm_loss
from .samplers import (ddim, ddpm_ancestral, dpm_solver, euler_maruyama, heun, predictor_corrector,
                       probability_flow)
from .schedules import DDPMSchedule, Schedule, alphas_cumprod, ddpm_betas, time_grid
from .sde import SDE, VESDE, VPSDE, BrownianSDE, SubVPSDE
from .toy import GaussianMixture, checkerboard, eight_gaussians, eight_gaussians_mixture, swiss_roll, two_moons
from .training import EMA, load_model, save_model, train
from .transport import gaussian_w2, ot_pairs, sinkhorn_w2, sliced_w2, w2
from .utils import append_dims, budget, default_device, seed
from .nets import Classifier, TimeMLP, UNet
from .vae import VAE
from .vdm import LearnedSchedule, vdm_loss

__version__ = "0.1.0"

__all__ = [
    "Schedule", "SDE", "BrownianSDE", "VESDE", "VPSDE", "SubVPSDE", "DDPMSchedule", "StraightPath",
    "Denoiser", "clip_x0", "time_grid",
    "GaussianMixture", "eight_gaussians_mixture", "two_moons", "swiss_roll", "checkerboard",
    "eight_gaussians",
    "ddpm_betas", "alphas_cumprod",
    "dsm_loss", "ddpm_loss", "cfm_loss", "drop_labels",
    "euler_maruyama", "probability_flow", "predictor_corrector", "ddpm_ancestral", "ddim", "heun",
    "dpm_solver",
    "w2", "TimeMLP", "EMA", "train", "save_model", "load_model",
    "append_dims", "budget", "default_device", "seed",
    "VAE", "log_likelihood", "ddpm_elbo", "bits_per_dim", "load_digits", "LearnedSchedule", "vdm_loss",
    "ot_pairs", "sinkhorn_w2", "sliced_w2", "gaussian_w2",
    "UNet", "Classifier",
]
