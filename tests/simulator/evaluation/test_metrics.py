"""Pure metrics against hand-computed values and scikit-image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from simulator.evaluation.metrics import (
    CurveMeter,
    delta_t_psnr,
    entropy_bits,
    frame_psnr_per_frame,
    frame_ssim_per_frame,
    mutual_information_bits,
)


def test_frame_psnr_by_hand() -> None:
    target = torch.zeros(1, 3, 3, 2, 2)
    pred = torch.stack([torch.full((3, 2, 2), v) for v in (0.2, 0.02, 3.0)])[None]  # (1,3,C,H,W)
    # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB; 4e-4 -> 40 dB; 3.0 clamps to 1: MSE 1 -> 6.0206 dB.
    psnr = frame_psnr_per_frame(pred, target)
    torch.testing.assert_close(psnr, torch.tensor([[20.0, 40.0, 10 * math.log10(4)]]))


def test_ssim_matches_scikit_image() -> None:
    skimage = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 24)
    smooth = np.stack([np.outer(np.sin(3 * x), np.cos(2 * x))] * 3)
    targets = [rng.uniform(-1, 1, (3, 24, 20)), smooth[:, :, :20]]
    for target in targets:
        pred = np.clip(target + rng.normal(0, 0.2, target.shape), -1, 1)
        expected = skimage.structural_similarity(
            pred.transpose(1, 2, 0), target.transpose(1, 2, 0), channel_axis=-1, data_range=2.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )  # fmt: skip
        ours = frame_ssim_per_frame(
            torch.from_numpy(pred)[None, None], torch.from_numpy(target)[None, None]
        )
        assert float(ours) == pytest.approx(expected, abs=1e-4)


def test_ssim_by_hand_and_bad_shapes() -> None:
    frame = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(
        frame_ssim_per_frame(frame, frame), torch.ones(2, 3, dtype=torch.float64)
    )
    noise = torch.randn(frame.shape, generator=torch.Generator().manual_seed(0))
    close, far = (frame_ssim_per_frame(frame + s * noise, frame) for s in (0.05, 0.5))
    assert bool((close < 1).all()) and bool((far < close).all())
    with pytest.raises(ValueError, match="frames of >= 11 pixels, got 8x8"):
        frame_ssim_per_frame(frame[..., :8, :8], frame[..., :8, :8])


def test_delta_t_psnr_by_hand() -> None:
    real = torch.zeros(2, 6, 3, 2, 2)
    inferred, random = torch.zeros_like(real), torch.zeros_like(real)
    inferred[0, 4], random[0, 4] = 0.2, 0.4  # 20 dB vs 10 log10(4 / 0.16) = 13.9794 dB
    inferred[1, 4], random[1, 4] = 0.02, -0.2  # 40 dB vs 20 dB
    random[:, 3] = 0.9  # frames other than t = 4 must not count
    expected = ((20 - 13.979400) + (40 - 20)) / 2  # 13.0103 dB
    assert delta_t_psnr(real, inferred, random, t=4) == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="t=4 needs clips of at least 5 frames.*got 4"):
        delta_t_psnr(real[:, :4], inferred[:, :4], random[:, :4], t=4)


def test_mutual_information_by_hand() -> None:
    # Two latent actions, four true ones: the latent action names the pair {0, 1} or {2, 3}.
    joint = torch.tensor([[5, 5, 0, 0], [0, 0, 5, 5]])
    assert entropy_bits(joint.sum(0)) == pytest.approx(2.0)
    assert mutual_information_bits(joint) == pytest.approx(1.0)  # one of the two bits
    assert mutual_information_bits(torch.full((3, 4), 7)) == pytest.approx(0.0, abs=1e-12)


def test_curve_meter_averages_over_clips() -> None:
    meter = CurveMeter()
    meter.add(torch.tensor([[10.0, 20.0], [20.0, 30.0]]))
    meter.add(torch.tensor([[40.0, 10.0]]))
    assert meter.mean() == pytest.approx([70 / 3, 20.0]) and meter.clips == 3
    with pytest.raises(ValueError, match="curve length changed from 2 to 3"):
        meter.add(torch.zeros(1, 3))
