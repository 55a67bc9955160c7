"""The fused GRU kernel (metarl/fused_gru.py, metarl/csrc/fused_gru.cpp) against torch.nn.GRU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from metarl import fused_gru
from metarl.algorithms import ALGORITHMS
from metarl.config import resolve


def _layers(count: int, inputs: int, hidden: int, dtype: torch.dtype) -> list[nn.GRU]:
    torch.manual_seed(count)
    layers = [nn.GRU(inputs, hidden).to(dtype) for _ in range(count)]
    for layer in layers:  # biases far from zero, so that a gate mix-up shows
        nn.init.uniform_(layer.bias_hh_l0, -1.0, 1.0)
    return layers


def _reference(x: torch.Tensor, h0: torch.Tensor, layers: list[nn.GRU]) -> torch.Tensor:
    return torch.stack([layer(x, h0[g].unsqueeze(0))[0] for g, layer in enumerate(layers)])


def test_the_kernel_builds_on_this_platform() -> None:
    """The speed-up is the point: on the CPU the learner must run the kernel, not the fallback."""
    assert fused_gru.available()


@pytest.mark.parametrize("count", [1, 2])
def test_outputs_and_every_gradient_equal_nn_gru_in_double_precision(count: int) -> None:
    layers = _layers(count, inputs=5, hidden=4, dtype=torch.float64)
    x = torch.randn(9, 3, 5, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(count, 3, 4, dtype=torch.float64, requires_grad=True)
    fused = fused_gru.gru_sequence(x, h0, layers)
    reference = _reference(x, h0, layers)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)  # a loss that weighs every output, the last step included
    leaves = [x, h0] + [p for layer in layers for p in layer.parameters()]
    got = torch.autograd.grad((fused * weights).sum(), leaves)
    want = torch.autograd.grad((reference * weights).sum(), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_single_precision_at_the_rl2_preset_shape() -> None:
    """Two GRU-64 over 100 steps × 125 trials (the bandit n = 100 minibatch): float32 rounding only."""
    layers = _layers(2, inputs=13, hidden=64, dtype=torch.float32)
    x = torch.rand(100, 125, 13)
    h0 = torch.zeros(2, 125, 64)
    fused = fused_gru.gru_sequence(x, h0, layers)
    reference = _reference(x, h0, layers)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-5)
    params = [p for layer in layers for p in layer.parameters()]
    got = torch.autograd.grad(fused.square().mean(), params)
    want = torch.autograd.grad(reference.square().mean(), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_without_the_kernel_the_nn_gru_modules_run_unchanged() -> None:
    layers = _layers(2, inputs=3, hidden=4, dtype=torch.float32)
    x, h0 = torch.rand(6, 2, 3), torch.rand(2, 2, 4)
    torch.testing.assert_close(
        fused_gru.gru_sequence(x, h0, layers, fused=False), _reference(x, h0, layers), rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="same input and hidden sizes"):
        fused_gru.gru_sequence(x, h0, [layers[0], nn.GRU(3, 5)])
    with pytest.raises(ValueError, match="single-layer"):
        fused_gru.gru_sequence(x, h0, [nn.GRU(3, 4, num_layers=2)])


def test_loading_the_kernel_leaves_denormals_alone() -> None:
    """Built with -ffast-math but not linked with it: the process keeps gradual underflow (a shared
    object linked with crtfastmath.o would flush denormals to zero for every computation in the process)."""
    assert fused_gru.available()
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    assert float(tiny * 1.0) > 0.0 and float(np.float32(1e-40) * np.float32(1.0)) > 0.0


def test_rl2_updates_equal_with_the_kernel_and_with_nn_gru() -> None:
    """Two PPO updates of the separate-value learner from the same seed: the same parameters to float
    rounding, the same trial returns."""
    env = {"id": "metarl/Bandit-K5-v0", "kwargs": {"num_pulls": 20}, "max_episode_steps": 20}
    algo = {
        "name": "rl2",
        "episodes_per_trial": 1,
        "segments_per_episode": 2,
        "hidden_size": 16,
        "meta_batch_size": 24,
        "value_network": "separate",
    }
    runs = []
    for fused in (True, False):
        raw = {"run": {"seed": 0}, "env": env, "algo": {**algo, "fused_gru": fused}}
        sampler, learner = ALGORITHMS["rl2"].build(resolve(raw), torch.device("cpu"))
        rng = np.random.default_rng(0)
        returns = [
            learner.meta_update(sampler.sample(24, split="train", rng=rng))["meta_train/trial_return"]
            for _ in range(2)
        ]
        runs.append((returns, [p.detach().clone() for p in learner.net.parameters()]))
    (returns_fused, params_fused), (returns_native, params_native) = runs
    assert returns_fused == pytest.approx(returns_native, abs=1e-5)
    for a, b in zip(params_fused, params_native, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_a_run_resumes_with_the_other_gru_kernel(tmp_path) -> None:
    """``algo.fused_gru`` is an implementation switch, not part of the experiment: a run trained with one
    kernel may be resumed with the other (e.g. a zoo entry trained before the kernel existed)."""
    from conftest import run_cli

    config = tmp_path / "rl2.toml"
    config.write_text(
        "[run]\niterations = 1\neval_every = 1\neval_tasks = 2\neval_steps = 1\n\n"
        '[env]\nid = "metarl/Bandit-K5-v0"\nkwargs = { num_pulls = 10 }\nmax_episode_steps = 10\n\n'
        '[algo]\nname = "rl2"\nmeta_batch_size = 8\nhidden_size = 8\nepisodes_per_trial = 1\n'
    )
    run = tmp_path / "run"
    assert run_cli("train", str(config), "--run-dir", str(run)).returncode == 0
    resumed = run_cli(
        "train",
        "--run-dir",
        str(run),
        "--resume",
        "--set",
        "run.iterations=2",
        "--set",
        "algo.fused_gru=false",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert '"iteration": 2' in (run / "metrics.jsonl").read_text()
