"""Networks. Every network is called as ``net(x, t)`` with ``x: (B, *dims)`` and ``t: (B,)``
(optionally ``net(x, t, y=y)`` with class labels ``y: (B,)``) and returns a tensor of ``x``'s
shape (the classifier returns logits).

**Time.** A network takes the time variable of the schedule it is trained on (the ``t`` that
:class:`~diffusion_edu.denoiser.Denoiser` and the losses pass: training indices ``0 .. N-1`` for a
:class:`~diffusion_edu.schedules.DDPMSchedule`, ``t in [0, T]`` for the SDEs and the straight
path), as a float tensor of any dtype. One rule sets the embedding's scale: the sinusoidal
embedding sees ``t_scale * t``, and ``t_scale`` is chosen so that the schedule's time range maps to
about ``0 .. 1000``, the range the embedding's frequencies were designed for: ``t_scale = 1`` for
DDPM indices (the :class:`UNet` default), ``t_scale = 1000`` for ``t in [0, 1]`` (the
:class:`TimeMLP` default). ``t_scale`` is a constructor argument, so it is part of the network's
saved ``config`` (:func:`diffusion_edu.training.save_model`).
"""

from .classifier import Classifier
from .dit import DiT
from .embeddings import sinusoidal_embedding
from .mlp import TimeMLP
from .transformer import Transformer, ar_log_prob, ar_sample
from .unet import UNet
from .video_unet import VideoUNet
from .wavenet import DiffWave

__all__ = ["TimeMLP", "UNet", "VideoUNet", "DiffWave", "DiT", "Transformer", "ar_log_prob", "ar_sample", "Classifier", "sinusoidal_embedding"]
