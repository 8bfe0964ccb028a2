"""What `worldsim eval world` reports: `WorldReport` (JSON, text), and the files it writes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from simulator.evaluation.actions import COPY, LAM, TRUE
from simulator.evaluation.figures import write_curve_plot
from worldsim.io.files import write_atomic
from worldsim.io.media import write_side_by_side_mp4


@dataclass
class WorldReport:
    clips: int
    horizon: int
    conditioning: list[str]  # action inputs the dynamics takes: latent, discrete, continuous
    sampling: dict[str, Any]
    seed: int
    psnr: dict[str, list[float]]  # curve -> mean PSNR (dB) of generated frame k, k = 1..H
    ssim: dict[str, list[float]]  # curve -> mean SSIM of generated frame k
    # Teacher-forced frame t+1 from the real frames 0..t, against copying frame t: mean PSNR
    # and SSIM, and pooled PSNR (of the mean squared error over every frame). Where its error
    # comes from: the share of tokens that change from frame t to t+1, the sample's exact
    # token accuracy on changed and on still positions, and pooled PSNR with the real tokens
    # put back where the frame stood still (_still_kept) or where it changed (_motion_given).
    next_frame: dict[str, float]
    delta_t: int
    delta_t_psnr: dict[str, float]  # "latent" / "true": steered minus random actions at delta_t
    latent_action_counts: list[int]  # LAM codes over every transition of the evaluated clips
    # What latent actions say about the clips' true actions (None without both), in bits.
    latent_true_mutual_info_bits: float | None = None
    true_action_entropy_bits: float | None = None
    # IDM agreement with the action ("generated": the true-action rollouts; "real": the real
    # clips, the ceiling; "floor": mismatched frame pairs), each an Agreement as a dict.
    controllability: dict[str, dict[str, Any]] | None = None
    fvd: dict[str, Any] | None = None  # fvd, clips, frames, protocol
    # The dynamics' masked-token loss (nats) with each clip's own and with shuffled actions, on
    # all masked tokens and on those that change (simulator.evaluation.action_check).
    action_shuffle: dict[str, float] | None = None
    tokenizer: str = ""
    lam: str = ""
    dynamics: str = ""
    idm: str = ""
    shards: str = ""
    split: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> WorldReport:
        try:
            return cls(**json.loads(text))
        except TypeError as err:  # missing or unknown fields
            raise ValueError(f"not a world-model report: {err}") from err

    def controllability_share(self) -> float | None:
        """IDM accuracy on generated frames as a share of its accuracy on real frames (for
        continuous controls: the mean R²'s share)."""
        c = self.controllability
        key = "mean_r2" if c and "mean_r2" in c.get("real", {}) else "accuracy"
        if not c or "real" not in c or not c["real"][key] or c["real"][key] <= 0:
            return None
        return c["generated"][key] / c["real"][key]

    def render(self) -> str:
        s, nf = self.sampling, self.next_frame
        lines = [
            f"world {self.dynamics} on {self.shards} [{self.split}]: {self.clips} clips, "
            f"{self.horizon}-frame rollouts from 1 prompt frame",
            f"  conditioning {'+'.join(self.conditioning)}; sampling {s.get('steps')} steps, "
            f"temperature {s.get('temperature')}, {s.get('order')} order; seed {self.seed}",
            f"  next frame (teacher-forced): PSNR {nf['psnr']:.2f} dB, pooled "
            f"{nf['pooled_psnr']:.2f} dB, SSIM {nf['ssim']:.3f}; copy last frame "
            f"{nf['copy_psnr']:.2f} / {nf['copy_pooled_psnr']:.2f} dB, SSIM {nf['copy_ssim']:.3f}",
        ]
        if "changed_token_share" in nf:  # reports written before the split lack it
            lines.append(
                f"  next frame's error by source: {nf['changed_token_share']:.0%} of tokens "
                f"change, sampled right on {nf['changed_token_accuracy']:.0%} of them and on "
                f"{nf['still_token_accuracy']:.0%} of the still ones; pooled PSNR with the real "
                f"still tokens {nf['pooled_psnr_still_kept']:.2f} dB, with the real changed "
                f"tokens {nf['pooled_psnr_motion_given']:.2f} dB"
            )
        marks = sorted({1, self.delta_t, self.horizon // 2, self.horizon} - {0})
        lines.append("  PSNR dB / SSIM at generated frame " + " / ".join(map(str, marks)) + ":")
        for name, curve in self.psnr.items():
            values = " / ".join(f"{curve[k - 1]:.2f}" for k in marks)
            ssim = " / ".join(f"{self.ssim[name][k - 1]:.3f}" for k in marks)
            lines.append(f"    {name:<22} {values}   {ssim}")
        for kind, value in self.delta_t_psnr.items():
            lines.append(f"  ΔtPSNR (t={self.delta_t}, {kind} actions vs random): {value:+.2f} dB")
        if self.latent_true_mutual_info_bits is not None:
            lines.append(
                f"  latent actions carry {self.latent_true_mutual_info_bits:.2f} bits about the "
                f"true actions (entropy {self.true_action_entropy_bits:.2f} bits)"
            )
        lines += self._control_lines()
        if self.fvd:
            lines.append(f"  FVD {self.fvd['fvd']:.1f} ({self.fvd['protocol']})")
        if sh := self.action_shuffle:
            lines.append(
                f"  shuffled actions raise the dynamics' loss by {sh['rise_changed']:+.3f} nats "
                f"on changed tokens ({sh['loss_own_changed']:.3f} -> "
                f"{sh['loss_shuffled_changed']:.3f}), {sh['rise_all']:+.3f} on all"
            )
        lines += [f"  WARNING: {name} {w}" for name, w in self.warnings().items()]
        return "\n".join(lines)

    def _control_lines(self) -> list[str]:
        c, share = self.controllability, self.controllability_share()
        if not c:
            return []
        if "r2" in c["generated"]:
            return self._regression_lines(c, share)
        gen, real = c["generated"], c.get("real", {})
        floor = c.get("floor", {}).get("accuracy", float("nan"))
        ceiling = f"{real.get('accuracy', 0):.1%} (balanced {real.get('balanced_accuracy', 0):.1%})"
        out = [
            f"  controllability: the IDM recovers {gen['accuracy']:.1%} of commanded actions "
            f"(balanced {gen['balanced_accuracy']:.1%}); on real frames {ceiling}, floor "
            f"{floor:.1%}" + (f"; {share:.0%} of the ceiling" if share is not None else "")
        ]
        if recon := c.get("reconstructed"):  # reports written before it lack it
            out.append(
                f"    on the tokenizer's rendering of the real tokens (a perfect dynamics): "
                f"{recon['accuracy']:.1%} (balanced {recon['balanced_accuracy']:.1%})"
            )
        recon_per = (recon or {}).get("per_class", {})
        per = ", ".join(
            f"{k} {v:.0%}/"
            + (f"{recon_per[k]:.0%}/" if k in recon_per else "")
            + f"{real.get('per_class', {}).get(k, float('nan')):.0%}"
            for k, v in gen["per_class"].items()
        )
        kinds = "generated/reconstructed/real" if recon_per else "generated/real"
        out.append(f"    per action, {kinds}: {per}")
        if one := c.get("one_step"):
            out.append(f"    one step from the real past: {one['accuracy']:.1%}")
        if steps := gen.get("by_step"):
            out.append(f"    by rollout step: {_by_step(steps, '.0%')}")
        return out

    @staticmethod
    def _regression_lines(c: dict[str, Any], share: float | None) -> list[str]:
        """Continuous controls: R² per control of each kind of frames."""
        order = ("generated", "one_step", "reconstructed", "real", "floor")
        kinds = [k for k in order if k in c]
        names = list(c["generated"]["r2"])
        per = "; ".join(f"{n} " + "/".join(f"{c[k]['r2'][n]:.2f}" for k in kinds) for n in names)
        ratio = f"; mean R² {share:.0%} of the real frames'" if share is not None else ""
        out = [
            f"  controllability: R² of the controls the IDM reads back{ratio}",
            f"    per control, {'/'.join(kinds)}: {per}",
        ]
        steps = c["generated"].get("by_step", {})  # reports written before it lack it
        out += [
            f"    {n} by rollout step: {_by_step(steps[n], '.2f')}" for n in names if n in steps
        ]
        return out

    def warnings(self) -> dict[str, str]:
        """Steered curves that lose to copying the prompt frame on average over the horizon."""
        copy = sum(self.psnr[COPY]) / self.horizon
        means = {
            name: sum(c) / self.horizon for name, c in self.psnr.items() if name in (TRUE, LAM)
        }
        return {
            name: f"loses to copying the prompt frame ({mean:.2f} vs {copy:.2f} dB)"
            for name, mean in means.items()
            if mean < copy
        }


def write_world_outputs(
    report: WorldReport, samples: dict[str, np.ndarray], out: Path
) -> dict[str, Path]:
    """report.json, psnr_vs_horizon.png, ssim_vs_horizon.png and, with samples, rollouts.mp4
    (one row per clip: real, then each action stream, under a row of column names)."""
    written = {"report": out / "report.json"}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(written["report"], report.to_json().encode())
    title = f"{report.clips} held-out clips, {report.sampling.get('steps')} MaskGIT steps"
    for metric, curves in (("PSNR (dB)", report.psnr), ("SSIM", report.ssim)):
        name = metric.split()[0].lower()
        written[name] = write_curve_plot(
            curves, f"{metric} vs horizon: {title}", metric, out / f"{name}_vs_horizon.png"
        )
    if samples:
        per_clip = zip(*samples.values(), strict=True)  # (H+1, H, W, 3) of each stream
        rows = [np.concatenate(list(clips), axis=2) for clips in per_clip]
        grid = np.concatenate(rows, axis=1)  # (T, clips * H, streams * W, 3)
        header = _column_labels(list(samples), grid.shape[2] // len(samples))
        video = np.concatenate([np.broadcast_to(header, (len(grid), *header.shape)), grid], 1)
        written["video"] = write_side_by_side_mp4([video], out / "rollouts.mp4", fps=8, scale=3)
    return written


def _column_labels(names: list[str], width: int, height: int = 10) -> np.ndarray:
    """(height, len(names) * width, 3) uint8: each column's stream name, small, on white."""
    strip = Image.new("RGB", (len(names) * width, height), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=8)
    for i, name in enumerate(names):
        label = name.replace("_actions", "").replace("_", " ")
        draw.text((i * width + 1, 0), label, fill="black", font=font)
    return np.asarray(strip)


def _by_step(values: list[float], fmt: str) -> str:
    """A per-transition score at rollout steps 1, 2, 4, 8, ... and the last."""
    shown = sorted(
        {2**i for i in range(len(values).bit_length()) if 2**i <= len(values)} | {len(values)}
    )
    return ", ".join(f"t{t} {format(values[t - 1], fmt)}" for t in shown)
