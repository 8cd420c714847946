"""The throughput benchmark: equal-sized networks, a sane tiny run, the table."""

import re
import time

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("diffusers")

from diffusion_edu.bench import (  # noqa: E402
    CONFIGS, OURS, PARAM_TOLERANCE, PEER, PEER_CONDITIONAL, bench, format_table, make_models, param_count,
    peer_kwargs,
)


@pytest.mark.parametrize("config", ["digits", "cifar10"])
def test_parameter_counts_match(config):
    ours, peer = make_models(config)
    n_ours, n_peer = param_count(ours), param_count(peer)
    assert abs(n_ours / n_peer - 1) <= PARAM_TOLERANCE
    # the mirrored architecture is in fact identical in size
    assert n_ours == n_peer == {"digits": 755_009, "cifar10": 38_307_203}[config]
    # and both map an image batch to an image batch
    cfg = CONFIGS[config]
    x, n = torch.randn(2, cfg.channels, cfg.size, cfg.size), torch.tensor([0, 999])
    with torch.no_grad():
        assert ours(x, n).shape == peer(x, n).sample.shape == x.shape


def test_peer_mirrors_attention_levels():
    kw = peer_kwargs(CONFIGS["cifar10"])
    assert kw["block_out_channels"] == (128, 256, 256, 256) and kw["layers_per_block"] == 2
    assert kw["down_block_types"] == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    assert kw["up_block_types"] == ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")


def _table_row(table, name):
    """The numbers of one model's line of the table: params, ms/step, images/s, CPU ms."""
    line = next(ln for ln in table.splitlines() if ln.startswith(name))
    fields = line[len(name):].split()
    return int(fields[0].replace(",", "")), float(fields[1]), float(fields[2]), float(fields[3])


def test_tiny_bench_run_and_table():
    """The timings are consistent with an independent wall clock around the call, the summary
    lies inside the timed steps, and the table reports the rows (to its printed precision)."""
    start = time.perf_counter()
    rows = bench("digits", batch_size=4, steps=3, warmup=1, generator=torch.Generator().manual_seed(0))
    elapsed_ms = 1000 * (time.perf_counter() - start)
    assert [r["name"] for r in rows] == [OURS, PEER]
    assert sum(sum(r["step_ms"]) for r in rows) <= elapsed_ms  # the timed steps happened inside the call
    for r in rows:
        assert r["params"] == 755_009 and r["batch_size"] == 4 and len(r["step_ms"]) == 3
        assert 0 < min(r["step_ms"]) <= r["ms_per_step"] <= max(r["step_ms"])
        # 4 images per step: the throughput lies between those of the slowest and the fastest step
        assert 4000 / max(r["step_ms"]) <= r["images_per_s"] <= 4000 / min(r["step_ms"])
        assert r["peak_memory_mb"] is None  # no allocator statistics on the CPU
        assert r["cpu_ms_per_step"] > 0
    table = format_table(rows)
    assert "n/a" in table  # the peak memory of a CPU run
    for r in rows:
        params, ms, ips, cpu = _table_row(table, r["name"])
        assert params == r["params"] == 755_009
        assert ms == pytest.approx(r["ms_per_step"], abs=0.05) and ips == pytest.approx(r["images_per_s"], abs=0.05)
        assert cpu == pytest.approx(r["cpu_ms_per_step"], abs=0.05)
    ratio, param_ratio = re.search(r"throughput ([\d.]+)x, parameters ([\d.]+)x", table).groups()
    _, _, ips_ours, _ = _table_row(table, OURS)
    _, _, ips_peer, _ = _table_row(table, PEER)
    assert float(ratio) == pytest.approx(ips_ours / ips_peer, abs=0.006) and param_ratio == "1.000"


def test_argument_checks():
    with pytest.raises(ValueError, match="config must be one of"):
        bench("imagenet")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        bench("digits", steps=0)
    with pytest.raises(ValueError, match="compile=True needs warmup >= 1"):
        bench("digits", compile=True, warmup=0)


def _forward_flops(fn, *args):
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def test_training_flops_count_the_forward_and_the_needed_gradients():
    """Against the convolutions written as matrix products (unfold, then a weight matrix times the
    columns: 2 B H W C_out C_in k^2 FLOPs, counted for a different operator): training_flops of a
    first layer is its forward plus the weight gradient only (2x the forward); for two layers the
    second also needs the gradient of its input (3x its forward)."""
    from diffusion_edu.bench import matmul_flops_per_s, training_flops

    conv1 = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    conv2 = torch.nn.Conv2d(8, 4, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 16, 16)

    def as_matmul(conv, z):  # the same convolution as one matrix product per image
        cols = F.unfold(z, 3, padding=1)  # (B, C_in 9, H W)
        return (conv.weight.flatten(1) @ cols).view(z.shape[0], conv.out_channels, *z.shape[2:])

    torch.testing.assert_close(as_matmul(conv1, x), conv1(x))
    f1, f2 = _forward_flops(as_matmul, conv1, x), _forward_flops(as_matmul, conv2, conv1(x))
    assert f1 == 2 * 2 * 16 * 16 * 8 * 3 * 9  # the matmul count itself
    assert training_flops(lambda z, t: conv1(z), x, None) == 2 * f1
    assert training_flops(lambda z, t: conv2(conv1(z)), x, None) == 2 * f1 + 3 * f2
    # a measured rate: 2 n^3 FLOPs over at least a microsecond and at most a second
    rate = matmul_flops_per_s("cpu", n=128, repeats=2)
    assert 2 * 128**3 <= rate <= 2 * 128**3 * 1e6


# -- the text-conditioned latent UNet against diffusers.UNet2DConditionModel ---------------------
def _count(module, cls_name):
    return sum(type(m).__name__ == cls_name for m in module.modules())


def test_latent_config_mirrors_the_conditional_unet():
    """The peer is a UNet2DConditionModel with the same widths and attention levels; its size is
    within the tolerance (not identical: joint attention and residual down/upsamplers, see bench.py),
    and both take a (B, tokens, context_dim) prompt and use it."""
    from diffusers import UNet2DConditionModel

    from diffusion_edu.nets.unet import CrossAttention

    cfg = CONFIGS["latent"]
    ours, peer = make_models("latent")
    assert isinstance(peer, UNet2DConditionModel) and ours.context_dim == cfg.context_dim == 64
    n_ours, n_peer = param_count(ours), param_count(peer)
    assert abs(n_ours / n_peer - 1) <= PARAM_TOLERANCE and n_ours != n_peer
    assert list(peer.config.block_out_channels) == [cfg.base_channels * m for m in cfg.channel_mults]
    assert peer.config.cross_attention_dim == cfg.context_dim
    # attention to the prompt in the same places: per level num_res_blocks (encoder) + num_res_blocks + 1
    # (decoder) at both levels, and one in the middle block: 2 * (1 + 2) + 1 = 7
    expected = len(cfg.channel_mults) * (2 * cfg.num_res_blocks + 1) + 1
    assert _count(ours, "CrossAttention") == expected
    assert sum(getattr(m, "added_kv_proj_dim", None) == cfg.context_dim for m in peer.modules()) == expected
    g = torch.Generator().manual_seed(0)
    x, n = torch.randn(2, cfg.channels, cfg.size, cfg.size, generator=g), torch.tensor([0, 999])
    c1, c2 = torch.randn(2, 2, cfg.tokens, cfg.context_dim, generator=g)
    with torch.no_grad():
        for m in ours.modules():  # ours starts with zero output projections: give them weights
            if isinstance(m, CrossAttention):
                torch.nn.init.normal_(m.proj.weight, std=0.1, generator=g)
        torch.nn.init.normal_(ours.out[-1].weight, std=0.1, generator=g)
        o1, o2 = ours(x, n, context=c1), ours(x, n, context=c2)
        p1, p2 = (peer(x, n, encoder_hidden_states=c).sample for c in (c1, c2))
    assert o1.shape == p1.shape == x.shape
    # the prompt changes both outputs (a network that ignored it would give identical outputs)
    assert (o1 - o2).abs().max() > 1e-3 and (p1 - p2).abs().max() > 1e-3


def test_tiny_latent_bench_run_and_table():
    rows = bench("latent", batch_size=2, steps=2, warmup=0, generator=torch.Generator().manual_seed(0))
    assert [r["name"] for r in rows] == [OURS, PEER_CONDITIONAL]
    ours, peer = make_models("latent")
    assert [r["params"] for r in rows] == [param_count(ours), param_count(peer)]
    for r in rows:
        assert r["config"] == "latent" and len(r["step_ms"]) == 2 and r["cpu_ms_per_step"] > 0
        assert 0 < min(r["step_ms"]) <= r["ms_per_step"] <= max(r["step_ms"])
    # The FLOPs include the prompt: ours with 16 tokens costs more than with the context left out (the
    # empty prompt skips the attention to it), by at least the key/value projections of the 16 tokens in
    # every cross-attention layer, 2 (forward) x 2 B L d_c 2C per layer (weights' gradients add more).
    cfg = CONFIGS["latent"]
    from diffusion_edu.bench import training_flops
    from diffusion_edu.nets.unet import CrossAttention

    x, n = torch.randn(2, cfg.channels, cfg.size, cfg.size), torch.tensor([1, 2])
    no_prompt = training_flops(ours, x, n)
    kv = sum(2 * 2 * cfg.tokens * cfg.context_dim * 2 * m.norm.num_channels
             for m in ours.modules() if isinstance(m, CrossAttention))
    assert rows[0]["flops_per_step"] - no_prompt >= kv, (rows[0]["flops_per_step"], no_prompt, kv)
    table = format_table(rows)
    for r in rows:
        params, ms, ips, cpu = _table_row(table, r["name"])
        assert params == r["params"] and ms == pytest.approx(r["ms_per_step"], abs=0.05)
    header = table.splitlines()[2]
    # the long diffusers name fits its column: the numbers of both rows end where the header's do
    assert all(len(ln) == len(header) for ln in table.splitlines()[3:5])
    ratio = float(re.search(r"throughput ([\d.]+)x", table).group(1))
    assert ratio == pytest.approx(rows[0]["images_per_s"] / rows[1]["images_per_s"], abs=0.006)


def test_cli_offers_the_latent_config():
    from diffusion_edu.cli import build_parser

    assert build_parser().parse_args(["bench", "--config", "latent"]).config == "latent"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--config", "imagenet"])
