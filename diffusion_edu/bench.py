r"""Training throughput of our :class:`~diffusion_edu.nets.unet.UNet` against ``diffusers.UNet2DModel``
(and, text-conditioned, against ``diffusers.UNet2DConditionModel``).

Both networks are built for the same image shape with the same parameter count (checked to
within 5%, :data:`PARAM_TOLERANCE`), and trained side by side in one process, on one device, on
the same batches. One *training step* of DDPM (Ho et al., 2020, Algorithm 1) is, for a batch
``x_0`` of ``B`` images, steps ``n ~ U{0, .., N-1}`` and noise ``eps ~ N(0, I)``:

.. math::  x_n = \sqrt{\bar\alpha_n}\, x_0 + \sqrt{1 - \bar\alpha_n}\, \epsilon, \qquad
           L = \lVert \epsilon_\theta(x_n, n) - \epsilon \rVert^2 / (B C H W),

then ``L.backward()`` and one Adam step. Only the network call differs: ours is
``net(x_n, n)``, diffusers' is ``net(x_n, n).sample``. The batches are drawn before the clock
starts (the cost measured is the network's and the optimiser's, not the sampling of ``x_n``).

Fair timing on a shared machine: after ``warmup`` untimed steps of each model, the two models
alternate step by step in the order ABBA ABBA ... (so that neither always runs first), every
step is timed on its own (``torch.cuda.synchronize`` before reading the clock on CUDA), and the
reported ``ms_per_step`` is the **median** over the timed steps, ``images_per_s = B / median``.
Other processes stealing the CPU lengthen some steps of both models; the median ignores them.
On the CPU each row also has ``cpu_ms_per_step``, the median *process CPU time*
(:func:`time.process_time`) of a step: on a machine shared with other jobs it leaves out the time
the operating system gave to them, so it is the steadier figure with one torch thread (with more
threads it also counts the threads' spin-waiting, and the wall time is the throughput that counts).

Memory: on CUDA ``peak_memory_mb`` is what one model's training needs alone: its parameters and
Adam moments plus the largest rise of ``torch.cuda.max_memory_allocated`` above the memory
allocated at the start of one of its steps (activations, gradients, temporaries). On the CPU
PyTorch keeps no allocator statistics, and the process's peak resident size
(``resource.getrusage().ru_maxrss``) only ever grows, covers both models and the Python heap and
cannot be split between two interleaved models, so the CPU value is ``None`` ("n/a").

Model FLOP utilisation (MFU): ``flops_per_step`` is the number of floating-point operations of
one training step's forward and backward pass, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
(convolutions, matrix products and attention; 2 per multiply-add; normalisations, activations and
the optimiser are not counted, as is customary). ``mfu = flops_per_step / step time / peak``,
where ``peak`` is the matrix-multiply rate *measured* on the same device in the same dtype by
:func:`matmul_flops_per_s` (bf16 under bf16 autocast, float32 otherwise), not a datasheet figure.

The configurations (:data:`CONFIGS`): ``"digits"``, 8x8 grey images, ``UNet(1, 1, 32, (1, 2), 1,
(2,))`` (0.76 M parameters); ``"cifar10"``, 32x32 colour images, ``UNet(3, 3, 128, (1, 2, 2, 2),
2, (2,))``, the shape of DDPM's CIFAR-10 network (38.3 M parameters here; 35.7 M in DDPM, whose
residual blocks add the time embedding instead of scaling and shifting by it). The diffusers
network is *derived* from ours by :func:`peer_kwargs`: the same channels per level, blocks per
level, attention levels (``AttnDownBlock2D`` / ``AttnUpBlock2D`` there), 32 GroupNorm groups,
32 channels per attention head and scale-shift time conditioning; the parameter counts then agree
exactly.

The text-conditioned configuration ``"latent"`` is the denoiser of the latent-diffusion pipeline of
chapter 11 (the default of :func:`diffusion_edu.pipelines.train_latent` and ``train-latent``): 8x8
latents with 4 channels, ``UNet(4, 4, 64, (1, 2), 1, (1, 2), context_dim=64)`` (3.31 M parameters),
every step also given a prompt context ``c`` of shape ``(B, tokens, context_dim) = (B, 16, 64)``:
``eps_theta(x_n, n, c)`` is ours ``net(x_n, n, context=c)``, diffusers'
``net(x_n, n, encoder_hidden_states=c).sample``. Every prompt is 16 real tokens (no padding), so
neither network gets a mask (ours builds its all-True mask, and pays for it; the peer's blocks, in
diffusers 0.42, raise an error when given an ``encoder_attention_mask``). The peer is a
``UNet2DConditionModel`` with the same channels, blocks and attention levels, scale-shift time
conditioning and 32 channels per head, built from its ``SimpleCrossAttn`` blocks
(``SimpleCrossAttnDownBlock2D``, ``UNetMidBlock2DSimpleCrossAttn``, ``SimpleCrossAttnUpBlock2D``;
the unCLIP / Kandinsky layout): there each attention layer is *one* softmax over the image positions
and the projected prompt tokens together (``added_kv_proj_dim``), where ours has a self-attention
layer followed by a cross-attention layer, and it down- and upsamples with residual blocks, where ours
uses (strided) convolutions. Its parameter count is 3.44 M, 1.038x ours, inside the 5% tolerance.
Stable Diffusion's own blocks (``CrossAttnDownBlock2D``: a transformer block with self-attention,
cross-attention and a GEGLU feed-forward of width 4) at the same channels have 4.41 M parameters,
1.33x ours, so they cannot be matched in size without changing the widths; that comparison is not a
configuration here. Measured with ``bench --config latent --threads 1 --steps 20 --repeats 3`` on a
2-core CPU shared with other jobs: ours / peer throughput 1.05x, 1.06x, 1.08x, process CPU time per
step 0.96x, 0.95x, 0.97x (27.8 against 30.2 GFLOP per training step). The command line
``python -m diffusion_edu bench --help`` runs it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .nets.unet import UNet
from .schedules import alphas_cumprod, ddpm_betas

__all__ = ["BenchConfig", "CONFIGS", "PARAM_TOLERANCE", "bench", "format_table", "make_models",
           "param_count", "peer_kwargs", "training_flops", "matmul_flops_per_s", "OURS", "PEER",
           "PEER_CONDITIONAL"]

PARAM_TOLERANCE = 0.05  # the two networks' parameter counts must agree to 5%
OURS, PEER = "diffusion_edu.UNet", "diffusers.UNet2DModel"
PEER_CONDITIONAL = "diffusers.UNet2DConditionModel"


@dataclass(frozen=True)
class BenchConfig:
    """An image shape, our UNet's arguments and the default batch size; with ``context_dim`` the
    UNet is text-conditioned and every step gets a ``(B, tokens, context_dim)`` prompt context."""

    channels: int
    size: int
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    attention_resolutions: tuple[int, ...]
    batch_size: int
    context_dim: int | None = None
    tokens: int = 0


CONFIGS: dict[str, BenchConfig] = {
    "digits": BenchConfig(1, 8, 32, (1, 2), 1, (2,), batch_size=64),
    "cifar10": BenchConfig(3, 32, 128, (1, 2, 2, 2), 2, (2,), batch_size=8),
    "latent": BenchConfig(4, 8, 64, (1, 2), 1, (1, 2), batch_size=64, context_dim=64, tokens=16),
}


def param_count(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peer_kwargs(cfg: BenchConfig) -> dict:
    """``diffusers.UNet2DModel`` arguments that mirror our ``UNet`` for ``cfg`` (with
    ``cfg.context_dim``: ``diffusers.UNet2DConditionModel`` arguments, see the module docstring).

    Level ``i`` has ``base_channels * channel_mults[i]`` channels and ``num_res_blocks`` residual
    blocks (diffusers' decoder, like ours, has one more); levels whose downsampling factor
    ``2**i`` is in ``attention_resolutions`` get attention (and, text-conditioned, attention to the
    prompt) after every residual block.

    Examples
    --------
    >>> kw = peer_kwargs(CONFIGS["digits"])
    >>> kw["block_out_channels"], kw["down_block_types"], kw["up_block_types"]
    ((32, 64), ('DownBlock2D', 'AttnDownBlock2D'), ('AttnUpBlock2D', 'UpBlock2D'))
    >>> kw = peer_kwargs(CONFIGS["latent"])
    >>> kw["down_block_types"], kw["mid_block_type"], kw["cross_attention_dim"]
    (('SimpleCrossAttnDownBlock2D', 'SimpleCrossAttnDownBlock2D'), 'UNetMidBlock2DSimpleCrossAttn', 64)
    """
    attn = [2**i in cfg.attention_resolutions for i in range(len(cfg.channel_mults))]
    if cfg.context_dim is not None:
        return dict(
            sample_size=cfg.size, in_channels=cfg.channels, out_channels=cfg.channels,
            block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults),
            layers_per_block=cfg.num_res_blocks,
            down_block_types=tuple("SimpleCrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",  # ours: the middle block always has attention
            up_block_types=tuple("SimpleCrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
            cross_attention_dim=cfg.context_dim, norm_num_groups=32,
            attention_head_dim=32,  # ours: head_channels=32
            resnet_time_scale_shift="scale_shift",  # ours: GroupNorm(h) * (1 + scale) + shift
        )
    return dict(
        sample_size=cfg.size, in_channels=cfg.channels, out_channels=cfg.channels,
        block_out_channels=tuple(cfg.base_channels * m for m in cfg.channel_mults),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        norm_num_groups=32, attn_norm_num_groups=32,  # ours: gcd(32, channels) = 32 here
        attention_head_dim=32,  # ours: head_channels=32
        resnet_time_scale_shift="scale_shift",  # ours: GroupNorm(h) * (1 + scale) + shift
    )


def make_models(config: str = "digits", seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """``(ours, peer)`` for ``config``; raises ``RuntimeError`` if their sizes differ by > 5%.

    Examples
    --------
    >>> ours, peer = make_models("digits")  # doctest: +SKIP
    >>> param_count(ours), param_count(peer)  # doctest: +SKIP
    (755009, 755009)
    """
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {tuple(CONFIGS)}, got {config!r}")
    try:
        from diffusers import UNet2DConditionModel, UNet2DModel
    except ImportError as e:  # the optional "compare" dependency
        raise ImportError("diffusion_edu.bench needs diffusers: pip install 'diffusion-edu[compare]'") from e
    cfg = CONFIGS[config]
    peer_class = UNet2DModel if cfg.context_dim is None else UNet2DConditionModel
    with torch.random.fork_rng(devices=[]):  # do not disturb the caller's global RNG
        torch.manual_seed(seed)
        ours = UNet(cfg.channels, cfg.channels, cfg.base_channels, cfg.channel_mults,
                    cfg.num_res_blocks, cfg.attention_resolutions, context_dim=cfg.context_dim)
        peer = peer_class(**peer_kwargs(cfg))
    n_ours, n_peer = param_count(ours), param_count(peer)
    if abs(n_ours / n_peer - 1) > PARAM_TOLERANCE:
        raise RuntimeError(f"config {config!r}: our UNet has {n_ours:,} parameters, diffusers' "
                           f"{n_peer:,}; they must agree within {PARAM_TOLERANCE:.0%}")
    return ours, peer


def bench(
    config: str = "digits", device: str | torch.device = "cpu", batch_size: int | None = None,
    steps: int = 10, warmup: int = 2, amp_dtype: torch.dtype | None = None,
    channels_last: bool = False, compile: bool = False, generator: torch.Generator | None = None,
) -> list[dict]:
    """Time training steps of our UNet and diffusers' UNet2DModel (``"latent"``:
    UNet2DConditionModel, with a prompt context), interleaved (see the module).

    Parameters
    ----------
    config : a key of :data:`CONFIGS` (``"digits"``, ``"cifar10"`` or ``"latent"``)
    device : where both models train
    batch_size : images per step (``None``: the configuration's default, 64 or 8)
    steps : timed steps per model
    warmup : untimed steps per model first (oneDNN / cuDNN autotuning, ``torch.compile``)
    amp_dtype : ``None`` (float32) or the ``torch.autocast`` dtype of the forward pass and loss;
        ``torch.float16`` adds a ``GradScaler``
    channels_last : both models and the inputs in NHWC memory order
    compile : ``torch.compile`` both models (needs ``warmup >= 1``: compiling is not timed)
    generator : source of the images, steps and noise (the models are seeded with 0)

    Returns
    -------
    Two dicts, ours then diffusers', with ``name`` (:data:`OURS`, then :data:`PEER` or
    :data:`PEER_CONDITIONAL`), ``params``, ``images_per_s``,
    ``ms_per_step`` (median wall time), ``cpu_ms_per_step`` (median process CPU time; ``None`` on
    CUDA), ``peak_memory_mb`` (``None`` on CPU), ``step_ms`` (every timed step), and the settings ``config``, ``device``, ``batch_size``, ``steps``, ``threads``,
    ``amp_dtype``, ``channels_last``, ``compile``; ``flops_per_step``, ``matmul_tflops`` (the
    measured peak) and ``mfu`` (see the module docstring).

    Examples
    --------
    >>> rows = bench("digits", batch_size=4, steps=2, warmup=1)  # doctest: +SKIP
    >>> [r["name"] for r in rows], rows[0]["params"] == rows[1]["params"]  # doctest: +SKIP
    (['diffusion_edu.UNet', 'diffusers.UNet2DModel'], True)
    """
    cfg = CONFIGS.get(config)
    if cfg is None:
        raise ValueError(f"config must be one of {tuple(CONFIGS)}, got {config!r}")
    batch_size = cfg.batch_size if batch_size is None else batch_size
    for name, v, lo in (("batch_size", batch_size, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if compile and warmup < 1:
        raise ValueError(f"compile=True needs warmup >= 1 so that compiling is not timed, got {warmup}")
    device = torch.device(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cuda = device.type == "cuda"

    models = make_models(config)
    nets, opts = [], []
    for m in models:
        m.to(device, memory_format=fmt).train()
        opts.append(torch.optim.Adam(m.parameters(), lr=1e-4))
        nets.append(torch.compile(m) if compile else m)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    batches = _batches(cfg, batch_size, min(steps + warmup, 8), generator, device, fmt)

    def step(k: int, i: int) -> float:
        """One training step of model k on batch i; returns its peak extra memory in bytes."""
        x_t, n, eps, ctx = batches[i % len(batches)]
        opts[k].zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = _call(k, nets[k], x_t, n, ctx)
            loss = F.mse_loss(out.float(), eps)
        scaler.scale(loss).backward()
        scaler.step(opts[k])
        scaler.update()
        if cuda:
            return torch.cuda.max_memory_allocated(device) - before
        return 0.0

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    for k in (0, 1):  # warm up each model alone
        for i in range(warmup):
            step(k, i)
    sync()
    times, cpu_times, extra = ([], []), ([], []), ([0.0], [0.0])
    for i in range(steps):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):  # ABBA ABBA ...
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            extra[k].append(step(k, warmup + i))
            sync()
            times[k].append(1000 * (time.perf_counter() - start))
            cpu_times[k].append(1000 * (time.process_time() - cpu_start))

    peak = matmul_flops_per_s(device, amp_dtype or torch.float32)
    x_t, n, _, ctx = batches[0]
    rows = []
    for k, (name, m) in enumerate(zip((OURS, PEER if cfg.context_dim is None else PEER_CONDITIONAL), models)):
        ms = statistics.median(times[k])
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            flops = training_flops(lambda x, t, k=k, m=m: _call(k, m, x, t, ctx), x_t, n)
        m.zero_grad(set_to_none=True)
        resident = sum(t.numel() * t.element_size() for t in _tensors(m, opts[k]))
        rows.append(dict(
            name=name, params=param_count(m), images_per_s=1000 * batch_size / ms, ms_per_step=ms,
            cpu_ms_per_step=None if cuda else statistics.median(cpu_times[k]),
            peak_memory_mb=(resident + max(extra[k])) / 2**20 if cuda else None,
            step_ms=list(times[k]), config=config, device=str(device), batch_size=batch_size,
            steps=steps, threads=torch.get_num_threads(), amp_dtype=str(amp_dtype).replace("torch.", ""),
            channels_last=channels_last, compile=compile, flops_per_step=flops,
            matmul_tflops=peak / 1e12, mfu=flops / (ms / 1000) / peak,
        ))
    return rows


def training_flops(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass of ``model(x, t)`` (2 per multiply-add), counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`; gradients are cleared afterwards.

    Examples
    --------
    >>> lin = nn.Linear(10, 20, bias=False)
    >>> training_flops(lambda x, t: lin(x), torch.randn(4, 10), None)  # 2*4*10*20 forward, as much backward
    3200

    (The backward pass of a first layer costs one product, for the weight's gradient; a layer whose
    input needs a gradient costs two.)
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = model(x, t)
        out = getattr(out, "sample", out)
        out.float().pow(2).mean().backward()
    if isinstance(model, nn.Module):
        model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_flops_per_s(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                       n: int | None = None, repeats: int = 5) -> float:
    """Measured rate of an ``n x n`` by ``n x n`` matrix product (``2 n^3`` FLOPs), the best of
    ``repeats`` timed products after one untimed one; ``n`` defaults to 8192 on CUDA, 1024 on CPU."""
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 1024)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device, dtype)
    b = torch.randn(n, n, generator=g).to(device, dtype)
    best = float("inf")
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first product warms up the kernels
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def format_table(rows: list[dict]) -> str:
    """A text table of :func:`bench` rows and the ratios ours / peer.

    Examples
    --------
    >>> rows = [dict(name=OURS, params=755009, images_per_s=800.0, ms_per_step=80.0, peak_memory_mb=None),
    ...         dict(name=PEER, params=755009, images_per_s=640.0, ms_per_step=100.0, peak_memory_mb=None)]
    >>> print(format_table(rows))
    model                         params   ms/step   images/s    CPU ms   peak MB  GFLOP/step    MFU
    diffusion_edu.UNet           755,009      80.0      800.0       n/a       n/a         n/a    n/a
    diffusers.UNet2DModel        755,009     100.0      640.0       n/a       n/a         n/a    n/a
    ours / peer: throughput 1.25x, parameters 1.000x
    """
    lines = []
    settings = [k for k in ("config", "device", "batch_size", "threads", "steps", "amp_dtype",
                            "channels_last", "compile") if k in rows[0]]
    if settings:
        lines.append(", ".join(f"{k}={rows[0][k]}" for k in settings))
    if rows[0].get("matmul_tflops") is not None:
        lines.append(f"measured matrix-multiply rate: {rows[0]['matmul_tflops']:.3g} TFLOP/s")
    width = max(24, max(len(r["name"]) for r in rows) + 2)  # the model column
    lines.append(f"{'model':<{width}}{'params':>12}{'ms/step':>10}{'images/s':>11}{'CPU ms':>10}{'peak MB':>10}"
                 f"{'GFLOP/step':>12}{'MFU':>7}")
    for r in rows:
        mem = "n/a" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}"
        cpu = "n/a" if r.get("cpu_ms_per_step") is None else f"{r['cpu_ms_per_step']:.1f}"
        flops = "n/a" if r.get("flops_per_step") is None else f"{r['flops_per_step'] / 1e9:.2f}"
        mfu = "n/a" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{r['name']:<{width}}{r['params']:>12,}{r['ms_per_step']:>10.1f}"
                     f"{r['images_per_s']:>11.1f}{cpu:>10}{mem:>10}{flops:>12}{mfu:>7}")
    by_name = {r["name"]: r for r in rows}
    peer = PEER if PEER in by_name else PEER_CONDITIONAL
    if OURS in by_name and peer in by_name:
        a, b = by_name[OURS], by_name[peer]
        line = (f"ours / peer: throughput {a['images_per_s'] / b['images_per_s']:.2f}x, "
                f"parameters {a['params'] / b['params']:.3f}x")
        if a.get("cpu_ms_per_step") and b.get("cpu_ms_per_step"):
            line += f", CPU time per step {a['cpu_ms_per_step'] / b['cpu_ms_per_step']:.2f}x"
        lines.append(line)
    return "\n".join(lines)


def _call(k: int, net, x: torch.Tensor, n: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
    """The noise prediction of model ``k`` (0: ours, 1: diffusers'), with the prompt context if any."""
    if k == 0:
        return net(x, n) if ctx is None else net(x, n, context=ctx)
    out = net(x, n) if ctx is None else net(x, n, encoder_hidden_states=ctx)
    return out.sample  # diffusers returns UNet2DOutput(sample=...) / UNet2DConditionOutput(sample=...)


def _batches(cfg, batch_size, count, generator, device, fmt):
    """``count`` tuples ``(x_n, n, eps, context)``; ``x_0`` uniform in [-1, 1] (the values do not matter),
    ``context`` a ``(B, tokens, context_dim)`` standard normal tensor or ``None``."""
    abar = alphas_cumprod(ddpm_betas(1000, "linear")).float()  # (1000,)
    out = []
    for _ in range(count):
        shape = (batch_size, cfg.channels, cfg.size, cfg.size)
        x0 = 2 * torch.rand(shape, generator=generator) - 1
        n = torch.randint(1000, (batch_size,), generator=generator)
        eps = torch.randn(shape, generator=generator)
        a = abar[n].reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
        x_n = a.sqrt() * x0 + (1 - a).sqrt() * eps
        ctx = None
        if cfg.context_dim is not None:
            ctx = torch.randn(batch_size, cfg.tokens, cfg.context_dim, generator=generator).to(device)
        out.append((x_n.to(device, memory_format=fmt), n.to(device), eps.to(device, memory_format=fmt), ctx))
    return out


def _tensors(model: nn.Module, opt: torch.optim.Optimizer):
    """Parameters and optimiser state tensors (the memory a model holds between steps)."""
    yield from model.parameters()
    for state in opt.state.values():
        yield from (v for v in state.values() if torch.is_tensor(v) and v.ndim > 0)
