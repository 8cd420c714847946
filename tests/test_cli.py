"""The command line: train, resume exactly, sample a PNG with every sampler; the same training under
torchrun (DDP, gloo on CPU, two processes) equals the gradient-averaged single-process computation."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from diffusion_edu.cli import SAMPLERS, main
from diffusion_edu.data import load_digits
from diffusion_edu.denoiser import Denoiser, clip_x0
from diffusion_edu.guidance import cfg
from diffusion_edu.losses import ddpm_loss
from diffusion_edu.nets import UNet
from diffusion_edu.samplers import ddim
from diffusion_edu.schedules import DDPMSchedule, alphas_cumprod, ddpm_betas, time_grid
from diffusion_edu.training import _batch, load_model, save_model

TINY = ["--dataset", "digits", "--device", "cpu", "--base-channels", "8", "--channel-mults", "1,2",
        "--num-res-blocks", "1", "--attention-resolutions", "2", "--timesteps", "50",
        "--batch-size", "8", "--num-samples", "4", "--no-progress"]


def _state(run):
    return torch.load(run / "train_state.pt", weights_only=True)


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_train_writes_a_run_and_resume_continues_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *TINY, "--steps", "6", "--out", str(full)]) == 0
    for name in ("config.json", "train_state.pt", "model.pt", "losses.txt", "samples.png"):
        assert (full / name).exists(), name
    assert isinstance(load_model(full / "model.pt"), UNet)  # the library reads the CLI's model file
    assert main(["train", *TINY, "--steps", "3", "--out", str(part)]) == 0
    with pytest.raises(SystemExit, match="--resume"):  # never overwrite a run silently
        main(["train", *TINY, "--steps", "6", "--out", str(part)])
    # --resume takes the run's settings from config.json: a different --lr here is ignored
    assert main(["train", *TINY, "--lr", "0.5", "--steps", "6", "--out", str(part), "--resume"]) == 0
    a, b = _state(full), _state(part)
    assert a["step"] == b["step"] == 6
    assert a["losses"] == b["losses"]
    _assert_same_weights(a["model"], b["model"])
    _assert_same_weights(a["ema"], b["ema"])
    assert json.loads((part / "config.json").read_text())["lr"] == 5e-4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_a_missing_gpu_says_so(tmp_path):
    with pytest.raises(SystemExit, match="no CUDA device"):
        main(["train", *TINY[:2], "--device", "cuda", "--steps", "1", "--out", str(tmp_path / "r")])


def _randomise_weights(run):
    """The UNet's last layers start at zero, so after 2 training steps its eps is nearly a constant,
    for which every deterministic sampler is exact and they all agree. Give model.pt random weights
    (keeping its metadata), so that the options of `sample` make visible differences."""
    net, meta = load_model(run / "model.pt", return_meta=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    save_model(net, run / "model.pt", meta=meta)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny unconditional eps model, trained for 2 steps, shared by the sampling tests."""
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(run), "--num-samples", "0"]) == 0
    _randomise_weights(run)
    return run


def _sample(run, out_dir, name, *args):
    """Run ``sample`` on ``run``'s model.pt; return the saved sample tensor and the PNG path."""
    png, pt = out_dir / f"{name}.png", out_dir / f"{name}.pt"
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--out", str(png), "--save-tensor", str(pt),
                 "--device", "cpu", *args]) == 0
    return torch.load(pt, weights_only=True), png


def _expected_tensor_of_the_grid(run, prediction, n, steps, y=None, w=1.0):
    """The CLI's DDIM sample computed here from the library: noise from seed 0, clipped x0, and
    with labels ``y`` classifier-free guidance of weight ``w``."""
    net, meta = load_model(run / "model.pt", return_meta=True)
    sched = DDPMSchedule(alphas_cumprod(ddpm_betas(meta["timesteps"], meta["schedule"])))
    x_T = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    den = Denoiser(net, sched, prediction)
    if y is not None:
        den = cfg(den.bind(y=y), den.bind(y=torch.full_like(y, net.null_label)), w)
    with torch.no_grad():
        return ddim(clip_x0(den), x_T, time_grid(sched, steps, "leading"))


def test_every_sampler_writes_a_png_grid_of_the_right_size(tiny_run, tmp_path):
    assert set(SAMPLERS) == {"ddpm", "ddim", "heun", "dpm_solver", "euler_maruyama", "probability_flow"}
    for sampler in SAMPLERS:
        steps = "1" if sampler == "ddpm" else "3"
        x, png = _sample(tiny_run, tmp_path, sampler, "--sampler", sampler, "--steps", steps,
                         "--num-samples", "6", "--nrow", "3")
        img = matplotlib.image.imread(png)
        scale, cell = 4, 8 + 1  # save_images: 4x enlarged 8x8 images with a 1-pixel frame
        assert img.shape[:2] == (scale * (2 * cell + 1), scale * (3 * cell + 1)), sampler
        assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all(), sampler
        if sampler != "euler_maruyama":  # its last step is the Euler-Maruyama mean, not x0_hat
            assert x.abs().max() <= 1 + 1e-6, sampler  # the clipped x0_hat of the last step: in [-1, 1]


def test_sampler_options_reach_the_sampler(tiny_run, tmp_path):
    """--order, --method, --churn, --eta and --spacing change what is computed: DPM-Solver of
    order 1 is DDIM (Lu et al., 2022) on the same grid; the other options change the samples."""
    common = ("--steps", "4", "--num-samples", "4")

    def run(name, *args):
        return _sample(tiny_run, tmp_path, name, *common, *args)[0]

    ddim_x = run("ddim", "--sampler", "ddim")
    torch.testing.assert_close(run("dpm1", "--sampler", "dpm_solver", "--order", "1"), ddim_x, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(run("dpm2", "--sampler", "dpm_solver", "--order", "2"), ddim_x, atol=1e-4)
    assert not torch.allclose(run("pf-euler", "--sampler", "probability_flow", "--method", "euler"),
                              run("pf-heun", "--sampler", "probability_flow", "--method", "heun"), atol=1e-4)
    assert not torch.allclose(run("heun-churn", "--sampler", "heun", "--churn", "1.0"),
                              run("heun", "--sampler", "heun"), atol=1e-4)
    assert not torch.allclose(run("ddim-eta", "--sampler", "ddim", "--eta", "1.0"), ddim_x, atol=1e-4)
    for spacing in ("trailing", "linspace", "uniform", "logsnr", "karras"):
        assert not torch.allclose(run(spacing, "--sampler", "ddim", "--spacing", spacing), ddim_x, atol=1e-4), spacing
    with pytest.raises(SystemExit, match="steps"):  # more steps than the 50 training steps
        run("too-many", "--sampler", "ddim", "--steps", "51")


def test_sample_computes_what_the_library_computes(tiny_run, tmp_path):
    x, _ = _sample(tiny_run, tmp_path, "ddim", "--sampler", "ddim", "--steps", "3", "--num-samples", "4")
    torch.testing.assert_close(x, _expected_tensor_of_the_grid(tiny_run, "eps", 4, 3))


def test_train_with_v_prediction_and_sample_reads_it_from_the_metadata(tmp_path):
    run = tmp_path / "v"
    assert main(["train", *TINY, "--prediction", "v", "--steps", "2", "--out", str(run)]) == 0
    assert (run / "samples.png").exists()
    _, meta = load_model(run / "model.pt", return_meta=True)
    assert meta["prediction"] == "v"
    assert json.loads((run / "config.json").read_text())["prediction"] == "v"
    _randomise_weights(run)
    x, _ = _sample(run, tmp_path, "v", "--sampler", "ddim", "--steps", "3", "--num-samples", "4")
    torch.testing.assert_close(x, _expected_tensor_of_the_grid(run, "v", 4, 3))  # read as v ...
    assert not torch.allclose(x, _expected_tensor_of_the_grid(run, "eps", 4, 3), atol=1e-4)  # ... not as eps


def test_class_conditional_run_and_guided_sampling(tmp_path):
    """--guidance w is uncond + w (cond - uncond): the default w = 1 is the conditional model, and
    w = 2 is classifier-free guidance computed by guidance.cfg."""
    run = tmp_path / "cond"
    main(["train", *TINY, "--class-conditional", "--steps", "2", "--out", str(run), "--num-samples", "0"])
    assert torch.load(run / "model.pt", weights_only=True)["config"]["num_classes"] == 10
    _randomise_weights(run)
    labels = torch.tensor([3, 7, 3, 7])
    common = ("--sampler", "ddim", "--steps", "3", "--num-samples", "4", "--labels", "3,7")
    x1, _ = _sample(run, tmp_path, "g1", *common)
    torch.testing.assert_close(x1, _expected_tensor_of_the_grid(run, "eps", 4, 3, y=labels, w=1.0))
    x2, png = _sample(run, tmp_path, "g2", *common, "--guidance", "2.0")
    torch.testing.assert_close(x2, _expected_tensor_of_the_grid(run, "eps", 4, 3, y=labels, w=2.0))
    assert png.exists() and not torch.allclose(x1, x2, atol=1e-4)
    with pytest.raises(SystemExit, match="labels"):
        main(["sample", "--checkpoint", str(run / "model.pt"), "--labels", "11", "--out", str(tmp_path / "h.png")])


def test_guidance_needs_a_class_conditional_model(tiny_run, tmp_path):
    with pytest.raises(SystemExit, match="class-conditional"):
        main(["sample", "--checkpoint", str(tiny_run / "model.pt"), "--guidance", "2.0",
              "--out", str(tmp_path / "u.png")])


def _torchrun(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "diffusion_edu", "train", *TINY, *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_ddp_two_processes_equals_averaged_gradients_and_resumes(tmp_path):
    # two processes: 2 steps, stop; then --resume to 3 steps (each rank restores its own generator)
    _torchrun(["--steps", "2", "--out", "ddp", "--num-samples", "0"], tmp_path)
    assert isinstance(_state(tmp_path / "ddp")["generator"], list)
    _torchrun(["--steps", "3", "--out", "ddp", "--resume"], tmp_path)
    state = _state(tmp_path / "ddp")
    assert state["step"] == 3 and len(state["generator"]) == 2  # one generator state per rank

    # The same computation in one process: rank r draws its batch and noise from its own
    # generator (seed * 1_000_003 + r); DDP averages the two gradients before clipping and Adam.
    torch.manual_seed(0)
    net = UNet(1, 1, 8, (1, 2), 1, (2,))
    x, y = load_digits(8, "train")
    abar = DDPMSchedule(alphas_cumprod(ddpm_betas(50, "cosine")))
    gens = [torch.Generator().manual_seed(r) for r in range(2)]
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    rank0_losses = []
    for _ in range(3):
        losses = [ddpm_loss(net, _batch((x, y), 8, g)[0], abar, generator=g) for g in gens]
        rank0_losses.append(losses[0].item())
        opt.zero_grad()
        (sum(losses) / 2).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    # tolerance: float32 reduction order differs (gloo all-reduce vs one backward), ~1e-7
    # relative per step, amplified by Adam's normalisation in the first steps
    _assert_same_weights(state["model"], net.state_dict(), atol=1e-5)
    torch.testing.assert_close(torch.tensor(state["losses"]), torch.tensor(rank0_losses))


def test_bench_command_prints_the_table(tmp_path, capsys):
    pytest.importorskip("diffusers")
    out = tmp_path / "bench.json"
    assert main(["bench", "--config", "digits", "--device", "cpu", "--batch-size", "4", "--steps", "2",
                 "--warmup", "1", "--repeats", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "diffusers.UNet2DModel" in text and "median over 2 runs" in text
    runs = json.loads(out.read_text())
    assert len(runs) == 2 and runs[0][0]["params"] == runs[0][1]["params"]
