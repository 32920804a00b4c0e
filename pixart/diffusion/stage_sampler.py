"""How a stage's checkpoint samples, read from its ``stage.json``: a diffusion stage with DPM-Solver
and classifier-free guidance, a DMD generator in one step from its t_gen, an LCM stage with its
``LCMScheduler`` in a few steps without guidance. ``pixart generate``, the stage's sample grid and
PixEval all sample through here, so a checkpoint is never drawn with another kind's sampler."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixart.stage_info import StageInfo

# the LCM demo's default (PixArt-LCM samples at 1-8 steps, 4 by default)
LCM_DEFAULT_STEPS = 4


@dataclass(frozen=True)
class StageSampler:
    kind: str  # "diffusion", "dmd" or "lcm"
    t_gen: int | None = None

    @classmethod
    def of(cls, pipeline_dir: str | Path) -> StageSampler:
        """The sampler of a pipeline folder; one without ``stage.json`` (a foreign pipeline) is a diffusion model."""
        if not StageInfo.exists(pipeline_dir):
            return cls("diffusion")
        info = StageInfo.read(pipeline_dir)
        if info.config.kind == "dmd":
            return cls("dmd", info.t_gen)
        return cls("lcm" if info.config.kind == "lcm" else "diffusion")

    def steps(self, requested: int | None, diffusion_default: int) -> int:
        """The steps it runs: one for DMD, ``requested`` or the kind's default otherwise."""
        if self.kind == "dmd":
            return 1
        return requested or (LCM_DEFAULT_STEPS if self.kind == "lcm" else diffusion_default)

    def describe(self, steps: int, cfg: float) -> str:
        if self.kind == "dmd":
            return f"one step from t={self.t_gen}"
        if self.kind == "lcm":
            return f"LCM {steps} step{'s' if steps > 1 else ''}, no CFG"
        return f"DPM-Solver {steps} steps, CFG {cfg}"

    def sample(self, pipeline: Any, prompts: Sequence[str], *, steps: int, cfg: float, seed: int = 0,
               height: int | None = None, width: int | None = None, max_tokens: int = 300) -> list:
        """PIL images of ``prompts``; ``cfg`` is a diffusion stage's only (the distilled ones have theirs built in)."""
        size = {"seed": seed, "height": height, "width": width, "max_tokens": max_tokens}
        if self.kind == "dmd":
            from pixart.diffusion.one_step import sample_one_step

            return sample_one_step(pipeline, prompts, t_gen=self.t_gen, **size)
        if self.kind == "lcm":
            from pixart.diffusion.lcm import sample_lcm

            return sample_lcm(pipeline, prompts, steps=steps, **size)
        from pixart.diffusion.sampling import sample

        return sample(pipeline, prompts, steps=steps, cfg=cfg, **size)
