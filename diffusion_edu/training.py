r"""Training: a plain loop with a progress bar, an exponential moving average (EMA) of the
weights, and checkpoints that are written atomically and can never run code when loaded.

EMA (Polyak averaging as used by Ho et al., 2020; Song et al., 2021):
``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

Checkpoints hold only tensors, numbers and strings, are written to a temporary file and then
renamed over the target (a crash never leaves half a file), and are read with
``torch.load(weights_only=True)``. A model is rebuilt from its class name, looked up in the
explicit table :data:`MODEL_CLASSES`, and its ``config`` dict of constructor arguments.

Watching a run: with ``log_dir=...`` :func:`train` writes the loss and the learning rate of
every step, and every ``sample_every`` steps a grid of images from ``sample_fn``, as TensorBoard
event files (``torch.utils.tensorboard``; the optional ``tensorboard`` extra). Open them with
``tensorboard --logdir <log_dir>``. Without tensorboard installed training runs unchanged and
warns once that nothing is logged.
"""

from __future__ import annotations

import copy
import gc
import math
import numbers
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm  # plain text bar: no widget dependency in notebooks or on the website

from .autoencoder import Autoencoder
from .nets.classifier import Classifier
from .nets.dit import DiT
from .nets.mlp import TimeMLP
from .nets.transformer import Transformer
from .nets.unet import UNet
from .nets.video_unet import VideoUNet
from .nets.wavenet import DiffWave
from .text import TextEncoder
from .vae import VAE
from .utils import check_finite

__all__ = ["EMA", "TrainResult", "train", "save_model", "load_model", "MODEL_CLASSES"]

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "TimeMLP": TimeMLP, "VAE": VAE, "UNet": UNet, "Classifier": Classifier,
    "Autoencoder": Autoencoder, "DiT": DiT, "TextEncoder": TextEncoder, "Transformer": Transformer,
    "DiffWave": DiffWave, "VideoUNet": VideoUNet,
}


class EMA:
    """Exponential moving average of a model's parameters, kept in ``self.model``."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0 <= decay < 1:
            raise ValueError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        shapes = [p.shape for p in model.parameters()]
        if shapes != [p.shape for p in self.model.parameters()]:
            raise ValueError("update needs the model the EMA was made from: its parameter shapes differ")
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.lerp_(p.detach(), 1 - self.decay)  # p_ema <- decay p_ema + (1 - decay) p
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


@dataclass
class TrainResult:
    model: nn.Module
    ema_model: nn.Module
    losses: list[float] = field(default_factory=list)


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor | tuple[torch.Tensor, ...] | Callable[[int, torch.Generator], torch.Tensor],
    steps: int,
    *,
    batch_size: int = 256,
    lr: float = 1e-3,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    progress: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    param_groups: Callable[[nn.Module], list[dict]] | None = None,
    log_dir: str | os.PathLike | None = None,
    sample_fn: Callable[[nn.Module, int], torch.Tensor] | None = None,
    sample_every: int = 500,
) -> TrainResult:
    """Minimise ``loss_fn(model, batch, generator)`` with Adam for ``steps`` steps.

    Parameters
    ----------
    data : a ``(N, *dims)`` tensor (batches drawn with replacement), a tuple of tensors with
        the same first dimension, e.g. ``(images, labels)`` (the batch is then the tuple of the
        same rows of each), or a callable ``data(n, generator)`` that returns a fresh batch
    checkpoint : path of a training checkpoint; if it exists, training resumes from it
        (model, EMA, optimiser, step, losses and generator state). It is written every
        ``checkpoint_every`` steps, at the end, and when the loop is interrupted.
        Resuming *sets* ``generator`` to the saved state, so that an interrupted and resumed
        run draws exactly the numbers of an uninterrupted one: draws made from the same
        generator between two calls are replayed. Give other work its own generator.
    amp_dtype : run the forward pass under ``torch.autocast`` with this dtype
        (``torch.bfloat16`` on a GPU; the weights, the optimiser and the EMA stay float32)
    channels_last : store images and convolution weights in NHWC order (faster convolutions
        on GPUs with tensor cores)
    compile : ``torch.compile`` the model for the training steps (the EMA copy is not compiled)
    param_groups : optional ``param_groups(model) -> [{"params": ..., "lr": ...}, ...]``, Adam's
        parameter groups (e.g. a second learning rate for part of the model); a group may set its
        own ``"grad_clip"`` (a float, or None for no clipping), which overrides ``grad_clip``
    log_dir : write TensorBoard event files here (``tensorboard --logdir <log_dir>`` shows them):
        the scalars ``train/loss`` and ``train/lr`` (``train/lr_group<i>`` for further parameter
        groups) at every step, tagged with the 0-based step. Needs the ``tensorboard`` package
        (``pip install "diffusion-edu[tensorboard]"``); without it a warning says that nothing is
        logged and training runs unchanged. A resumed run discards events after its resume step.
    sample_fn : optional ``sample_fn(ema_model, step) -> images``, ``(B, C, H, W)`` in ``[-1, 1]``,
        called without gradients every ``sample_every`` steps and after the last step; the images
        are logged as the grid ``samples`` at ``step`` = number of steps done (needs ``log_dir``)

    Distributed data parallel: when :mod:`torch.distributed` is initialised (e.g. under
    ``torchrun``), the model is wrapped in ``DistributedDataParallel``; each process draws its
    own batch of ``batch_size`` from its own ``generator`` (seed it with the rank), the gradients
    are averaged across processes, only rank 0 shows the progress bar, and the checkpoint,
    written by rank 0, keeps every rank's generator state so that ``--resume`` is exact.
    An interrupt under DDP saves nothing (the ranks cannot agree on a step); the last periodic
    checkpoint is the resume point.

    Returns
    -------
    TrainResult with the trained ``model``, its ``ema_model`` and the per-step ``losses``
    (this process's losses under DDP).
    """
    _check_train_args(model, loss_fn, data, steps, batch_size, lr, grad_clip, checkpoint_every,
                      amp_dtype, param_groups, log_dir, sample_fn, sample_every)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dist = torch.distributed
    ddp = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=memory_format).train()
    groups = [{"params": list(model.parameters())}] if param_groups is None else param_groups(model)
    opt = torch.optim.Adam(groups, lr=lr)
    ema = EMA(model, ema_decay)
    result = TrainResult(model, ema.model)
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = _load(checkpoint, device, "a training checkpoint written by train")
        keys = {"model", "ema", "optimizer", "generator", "step", "losses"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError(f"{checkpoint} is not a training checkpoint written by train: it lacks "
                             f"{sorted(keys - set(state)) if isinstance(state, dict) else 'the dict of states'}")
        _load_state(model, state["model"], checkpoint)
        _load_state(ema.model, state["ema"], checkpoint)
        opt.load_state_dict(state["optimizer"])
        gen_states = state["generator"]
        if isinstance(gen_states, list):  # one state per rank
            if len(gen_states) != world:
                raise ValueError(f"checkpoint was written by {len(gen_states)} processes, resuming with {world}")
            gen_states = gen_states[rank]
        generator.set_state(gen_states.cpu())
        start, result.losses = state["step"], list(state["losses"])

    net = model
    if compile:
        net = torch.compile(net)
    if ddp:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)

    def save_state(step, generator_state):
        if checkpoint is None:
            return
        if ddp:  # every rank's generator state, in rank order
            states = [None] * world
            dist.all_gather_object(states, generator_state)
            generator_state = states
        if rank == 0:
            _atomic_save(dict(model=model.state_dict(), ema=ema.model.state_dict(),
                              optimizer=opt.state_dict(), generator=generator_state,
                              step=step, losses=result.losses), checkpoint)
        if ddp:
            dist.barrier()

    writer = _writer(log_dir, purge_step=start) if rank == 0 else None

    def log_samples(done):
        if writer is not None and sample_fn is not None:
            with torch.no_grad():
                images = sample_fn(ema.model, done)
            if not torch.is_tensor(images) or images.ndim != 4:
                raise ValueError(f"sample_fn must return images (B, C, H, W), got {images!r:.60}")
            writer.add_images("samples", ((images.detach().float().cpu() + 1) / 2).clamp(0, 1), done)

    step = start
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress or rank != 0,
               desc="train")
    try:
        for step in bar:
            step_start_state = generator.get_state()  # an interrupted step is replayed from here
            batch = _to(_batch(data, batch_size, generator), device, memory_format)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = loss_fn(net, batch, generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for group in opt.param_groups:  # clip each group's gradient norm
                clip = group.get("grad_clip", grad_clip)
                if clip is not None:
                    nn.utils.clip_grad_norm_(group["params"], clip)
            opt.step()
            ema.update(model)
            result.losses.append(loss.item())
            if writer is not None:
                writer.add_scalar("train/loss", result.losses[-1], step)
                for i, group in enumerate(opt.param_groups):
                    writer.add_scalar("train/lr" if i == 0 else f"train/lr_group{i}", group["lr"], step)
                if (step + 1) % sample_every == 0:
                    log_samples(step + 1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if checkpoint is not None and (step + 1) % checkpoint_every == 0:
                save_state(step + 1, generator.get_state())
        step = max(steps, start)
        if steps > start and steps % sample_every != 0:
            log_samples(steps)  # the final model, unless just logged
    except KeyboardInterrupt:
        if not ddp:
            save_state(step, step_start_state)  # nothing lost: the same call resumes from here
        raise
    finally:
        if writer is not None:
            writer.close()
    save_state(step, generator.get_state())
    if ddp:  # free the DDP reducer (and its gloo/NCCL work) now, not at interpreter exit
        del net
        gc.collect()
    model.eval()
    return result


def _check_train_args(model, loss_fn, data, steps, batch_size, lr, grad_clip, checkpoint_every,
                      amp_dtype, param_groups, log_dir, sample_fn, sample_every):
    """Every argument of :func:`train` is what the loop needs, or a ValueError says what is not."""
    if not isinstance(model, nn.Module) or not any(True for _ in model.parameters()):
        raise ValueError(f"model must be a torch.nn.Module with parameters, got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable as loss_fn(model, batch, generator), got {loss_fn!r:.60}")
    for name, value in (("steps", steps), ("batch_size", batch_size), ("checkpoint_every", checkpoint_every),
                        ("sample_every", sample_every)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if name == "steps" else 1):
            kind = "non-negative" if name == "steps" else "positive"
            raise ValueError(f"{name} must be a {kind} int, got {value!r}")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, numbers.Real)
                                  or not (math.isfinite(grad_clip) and grad_clip > 0)):
        raise ValueError(f"grad_clip must be a positive finite number or None, got {grad_clip!r}")
    if amp_dtype not in (None, torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype must be None, torch.bfloat16 or torch.float16, got {amp_dtype!r}")
    if param_groups is not None and not callable(param_groups):
        raise ValueError(f"param_groups must be callable as param_groups(model), got {param_groups!r:.60}")
    if sample_fn is not None and not callable(sample_fn):
        raise ValueError(f"sample_fn must be callable as sample_fn(ema_model, step), got {sample_fn!r:.60}")
    if sample_fn is not None and log_dir is None:
        raise ValueError("sample_fn needs log_dir: the sample grids are written to TensorBoard event files there")
    if isinstance(data, tuple):
        if not data or any(not torch.is_tensor(d) or len(d) != len(data[0]) for d in data):
            raise ValueError("data given as a tuple must hold tensors with the same first dimension")
        if len(data[0]) == 0:
            raise ValueError("data must hold at least one example, got an empty first dimension")
        check_finite(data[0], "data[0]")
    elif torch.is_tensor(data):
        if data.ndim < 1 or len(data) == 0:
            raise ValueError(f"data must be a (N, *dims) tensor with N >= 1, got shape {tuple(data.shape)}")
        check_finite(data, "data")
    elif not callable(data):
        raise ValueError(f"data must be a tensor, a tuple of tensors or a callable data(n, generator), "
                         f"got {type(data).__name__}")


def _writer(log_dir, purge_step):
    """A TensorBoard SummaryWriter for ``log_dir``, or None (with a warning) without tensorboard."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard imports the tensorboard package
        warnings.warn("log_dir was given but the tensorboard package is not installed, so nothing is "
                      "logged; install it with pip install \"diffusion-edu[tensorboard]\" (training continues)",
                      stacklevel=3)
        return None
    return SummaryWriter(os.fspath(log_dir), purge_step=purge_step or None)


def _batch(data, n, generator):
    if isinstance(data, tuple):
        idx = torch.randint(len(data[0]), (n,), generator=generator)
        return tuple(d[idx] for d in data)
    if torch.is_tensor(data):
        idx = torch.randint(len(data), (n,), generator=generator)
        return data[idx]
    return data(n, generator)


def _to(batch, device, memory_format):
    """Move a batch (tensor or tuple of tensors) to ``device``; images (4-D) in ``memory_format``."""
    if isinstance(batch, tuple):
        return tuple(_to(b, device, memory_format) for b in batch)
    if batch.ndim == 4:
        return batch.to(device, memory_format=memory_format)
    return batch.to(device)


def save_model(model: nn.Module, path: str | os.PathLike, *, meta: dict | None = None) -> None:
    """Write ``model`` (class name, ``config`` and weights) atomically to ``path``; ``meta``: an
    optional dict of numbers and strings stored beside it (e.g. the diffusion schedule)."""
    name = type(model).__name__
    if name not in MODEL_CLASSES or not hasattr(model, "config"):
        raise ValueError(
            f"model must be one of {sorted(MODEL_CLASSES)} with a .config, got {name}"
        )
    state = {"class": name, "config": dict(model.config), "state_dict": model.state_dict()}
    if meta is not None:
        if not isinstance(meta, dict) or not all(
                isinstance(k, str) and isinstance(v, (str, int, float, bool, type(None))) for k, v in meta.items()):
            raise ValueError(f"meta must be a dict from str to numbers and strings (the file must load "
                             f"with weights_only=True), got {meta!r:.80}")
        state["meta"] = dict(meta)
    _atomic_save(state, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               return_meta: bool = False):
    """Rebuild a model saved by :func:`save_model`; loads with ``weights_only=True``.
    With ``return_meta=True`` returns ``(model, meta)`` (``meta`` is ``{}`` if none was saved).

    A file that is not such a model file raises a ``ValueError`` that names it and says what is
    wrong (not a torch file, objects that weights-only loading refuses, a missing class or config,
    weights that do not fit the config); a missing file raises ``FileNotFoundError``."""
    state = _load(path, map_location, "a model file written by save_model")
    if not isinstance(state, dict) or state.get("class") not in MODEL_CLASSES:
        found = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a model file written by save_model: it needs a 'class' among "
                         f"{sorted(MODEL_CLASSES)}, 'config' and 'state_dict'; found {found}")
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("state_dict"), dict):
        raise ValueError(f"{path} is not a model file written by save_model: 'config' or 'state_dict' is missing")
    try:
        model = MODEL_CLASSES[state["class"]](**state["config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its config does not build a {state['class']}: {e}") from e
    _load_state(model, state["state_dict"], path)
    model.eval()
    return (model, state.get("meta", {})) if return_meta else model


def _load(path, map_location, what):
    """``torch.load(path, weights_only=True)``, with a ValueError naming the file when it is not ``what``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # not a pickle, or one that would build other objects
        detail = next((line.strip() for line in str(e).splitlines()  # torch's one line on the cause
                       if "nsupported" in line and "file an issue" not in line), "")
        raise ValueError(f"{path} is not {what}: torch.load(weights_only=True) refuses it (not a torch "
                         f"file, or it holds objects other than tensors, numbers and strings, whose code "
                         f"is never run){': ' + detail if detail else ''}") from e
    except (EOFError, KeyError, RuntimeError, OSError) as e:
        raise ValueError(f"{path} is not {what}: not a file written by torch.save "
                         f"({type(e).__name__}: {str(e)[:80] or 'empty or truncated'})") from e


def _load_state(module, state_dict, path):
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        first = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise ValueError(f"{path}: its weights do not fit a {type(module).__name__} of its config: {first}") from e


def _atomic_save(obj, path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
