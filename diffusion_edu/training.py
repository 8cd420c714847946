r"""Training: a plain loop with a progress bar, an exponential moving average (EMA) of the
weights, and checkpoints that are written atomically and can never run code when loaded.

EMA (Polyak averaging as used by Ho et al., 2020; Song et al., 2021):
``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every optimiser step.

Checkpoints hold only tensors, numbers and strings, are written to a temporary file and then
renamed over the target (a crash never leaves half a file), and are read with
``torch.load(weights_only=True)``. A model is rebuilt from its class name, looked up in the
explicit table :data:`MODEL_CLASSES`, and its ``config`` dict of constructor arguments.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm  # plain text bar: no widget dependency in notebooks or on the website

from .nets.classifier import Classifier
from .nets.mlp import TimeMLP
from .nets.unet import UNet
from .vae import VAE
from .utils import check_finite

__all__ = ["EMA", "TrainResult", "train", "save_model", "load_model", "MODEL_CLASSES"]

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "TimeMLP": TimeMLP, "VAE": VAE, "UNet": UNet, "Classifier": Classifier,
}


class EMA:
    """Exponential moving average of a model's parameters, kept in ``self.model``."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0 <= decay < 1:
            raise ValueError(f"decay must lie in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
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
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if isinstance(data, tuple):
        if not data or any(not torch.is_tensor(d) or len(d) != len(data[0]) for d in data):
            raise ValueError("data given as a tuple must hold tensors with the same first dimension")
        check_finite(data[0], "data[0]")
    elif torch.is_tensor(data):
        check_finite(data, "data")
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
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.model.load_state_dict(state["ema"])
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
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if checkpoint is not None and (step + 1) % checkpoint_every == 0:
                save_state(step + 1, generator.get_state())
        step = max(steps, start)
    except KeyboardInterrupt:
        if not ddp:
            save_state(step, step_start_state)  # nothing lost: the same call resumes from here
        raise
    save_state(step, generator.get_state())
    model.eval()
    return result


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
        state["meta"] = dict(meta)
    _atomic_save(state, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
               return_meta: bool = False):
    """Rebuild a model saved by :func:`save_model`; loads with ``weights_only=True``.
    With ``return_meta=True`` returns ``(model, meta)`` (``meta`` is ``{}`` if none was saved)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("class") not in MODEL_CLASSES:
        raise ValueError(f"{path} is not a checkpoint written by save_model")
    model = MODEL_CLASSES[state["class"]](**state["config"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    return (model, state.get("meta", {})) if return_meta else model


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
