"""The command line: train, resume exactly, sample a PNG; the same training under torchrun (DDP,
gloo on CPU, two processes) equals the gradient-averaged single-process computation."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from diffusion_edu.cli import main
from diffusion_edu.data import load_digits
from diffusion_edu.losses import ddpm_loss
from diffusion_edu.nets import UNet
from diffusion_edu.schedules import alphas_cumprod, ddpm_betas
from diffusion_edu.train import _batch, load_model

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


@pytest.mark.parametrize("sampler, steps", [("ddim", "5"), ("ddpm", "0")])
def test_sample_writes_a_png_grid(tmp_path, sampler, steps):
    run = tmp_path / "run"
    main(["train", *TINY, "--steps", "2", "--out", str(run), "--num-samples", "0"])
    png, pt = tmp_path / "grid.png", tmp_path / "x.pt"
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--sampler", sampler,
                 "--steps", steps if sampler == "ddim" else "1", "--num-samples", "6", "--nrow", "3",
                 "--out", str(png), "--save-tensor", str(pt), "--device", "cpu"]) == 0
    img = matplotlib.image.imread(png)
    scale, cell = 4, 8 + 1  # save_images: 4x enlarged 8x8 images with a 1-pixel frame
    assert img.shape[:2] == (scale * (2 * cell + 1), scale * (3 * cell + 1))
    x = torch.load(pt, weights_only=True)
    assert x.shape == (6, 1, 8, 8) and torch.isfinite(x).all()


def test_class_conditional_run_and_guided_sampling(tmp_path):
    run = tmp_path / "cond"
    main(["train", *TINY, "--class-conditional", "--steps", "2", "--out", str(run), "--num-samples", "0"])
    assert torch.load(run / "model.pt", weights_only=True)["config"]["num_classes"] == 10
    assert main(["sample", "--checkpoint", str(run / "model.pt"), "--steps", "3", "--num-samples", "4",
                 "--labels", "3,7", "--guidance", "2.0", "--out", str(tmp_path / "g.png")]) == 0
    with pytest.raises(SystemExit, match="labels"):
        main(["sample", "--checkpoint", str(run / "model.pt"), "--labels", "11", "--out", str(tmp_path / "h.png")])


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
    abar = alphas_cumprod(ddpm_betas(50, "cosine"))
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
