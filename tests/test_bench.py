"""The throughput benchmark: equal-sized networks, a sane tiny run, the table."""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from diffusion_edu.bench import (  # noqa: E402
    CONFIGS, OURS, PARAM_TOLERANCE, PEER, bench, format_table, make_models, param_count, peer_kwargs,
)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_parameter_counts_match(config):
    ours, peer = make_models(config)
    n_ours, n_peer = param_count(ours), param_count(peer)
    print(config, n_ours, n_peer)
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


def test_tiny_bench_run_and_table():
    rows = bench("digits", batch_size=4, steps=2, warmup=1, generator=torch.Generator().manual_seed(0))
    assert [r["name"] for r in rows] == [OURS, PEER]
    for r in rows:
        assert r["params"] == 755_009 and r["batch_size"] == 4 and len(r["step_ms"]) == 2
        assert r["ms_per_step"] > 0 and math.isclose(r["images_per_s"], 4000 / r["ms_per_step"])
        assert r["peak_memory_mb"] is None  # no allocator statistics on the CPU
        assert r["cpu_ms_per_step"] > 0
    table = format_table(rows)
    print(table)
    assert OURS in table and PEER in table and "n/a" in table and "755,009" in table
    ratio = rows[0]["images_per_s"] / rows[1]["images_per_s"]
    assert f"throughput {ratio:.2f}x, parameters 1.000x" in table


def test_argument_checks():
    with pytest.raises(ValueError, match="config must be one of"):
        bench("imagenet")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        bench("digits", steps=0)
    with pytest.raises(ValueError, match="compile=True needs warmup >= 1"):
        bench("digits", compile=True, warmup=0)


def test_training_flops_of_a_convolution_match_the_closed_form():
    """Forward: 2 B C_out H W C_in k^2 (a multiply-add per weight and output pixel); backward of
    a first layer: the weight gradient only, the same count again."""
    from diffusion_edu.bench import matmul_flops_per_s, training_flops

    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    forward = 2 * 2 * 8 * 16 * 16 * 3 * 3 * 3
    assert training_flops(lambda x, t: conv(x), torch.randn(2, 3, 16, 16), None) == 2 * forward
    assert matmul_flops_per_s("cpu", n=128, repeats=2) > 0
