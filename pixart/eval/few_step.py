"""The paper's Table 4 on this run: the teacher at PixEval's steps, each DMD generator distilled
from it in one step, and the LCM stage in 1, 2 and 4 steps. Every row is a PixEval of the same
prompts, seeds, resolution and batch, rendered one after another in the PixEval process; its
speed-up is the teacher's seconds per image over its own."""

from __future__ import annotations

from collections.abc import Mapping

from pixart.config import Profile

Metrics = dict[str, float | str]
ROW_METRICS = ("fid", "alignment", "alignment_shuffled", "clip_score", "seconds_per_image", "n_images", "sampler")

def lcm_stages(profile: Profile) -> list[str]:
    return [name for name, stage in profile.stages.items() if stage.kind == "lcm"]


def table4(profile: Profile, lcm: str, results: Mapping[str, Metrics], lcm_by_steps: Mapping[int, Metrics],
           teacher_steps: int) -> dict[str, object]:
    """Table 4 for the LCM stage ``lcm``: its teacher (``init_from``), the DMD stages of the same teacher
    that were evaluated, and ``lcm_by_steps`` (steps -> PixEval metrics), fastest distilled row first."""
    teacher = profile.stages[lcm].init_from

    def row(label: str, stage: str, steps: int, metrics: Metrics) -> dict[str, object]:
        kept = {k: metrics[k] for k in ROW_METRICS if k in metrics}
        speedup = results[teacher]["seconds_per_image"] / metrics["seconds_per_image"]
        return {"row": label, "stage": stage, "steps": steps, **kept, "speedup": speedup}

    dmd = [name for name, stage in profile.stages.items()
           if stage.kind == "dmd" and stage.init_from == teacher and name in results]
    rows = [row("DMD", name, 1, results[name]) for name in dmd]
    rows += [row("LCM", lcm, steps, metrics) for steps, metrics in sorted(lcm_by_steps.items())]
    rows.append(row("teacher", teacher, teacher_steps, results[teacher]))
    return {"teacher": teacher, "lcm": lcm, "pixels": profile.pixels(profile.stages[lcm]), "rows": rows}
