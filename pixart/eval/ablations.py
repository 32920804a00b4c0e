"""The paper's claims as ablations: each claimed step (a curriculum stage) against the same stage with the
claimed fields changed back, as one paired comparison.

Both arms start from the stage's weak input and render PixEval's prompts with its seeds, so image i of
one pairs with image i of the other, and the difference in the claim's metric gets the weak-to-strong
trend's paired bootstrap interval over prompts (``trend``). The gain is signed so that a positive one
favours the stage: FID(ablation) − FID(stage), or alignment(stage) − alignment(ablation).

A claim that a step earns something (``better``) is supported when the whole interval is above zero,
not supported when it is below, and not resolved at this sample size otherwise. A claim that a step
costs little (``no-worse``) allows a loss of ``margin`` of the ablation's value: supported when the
interval stays above that loss, not supported when it lies wholly beyond it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pixart.config import AblationConfig, StageConfig
from pixart.eval.fid import Statistics
from pixart.eval.pixeval import StageEvaluation
from pixart.eval.trend import alignment_gain, fid_gain

SUPPORTED, NOT_SUPPORTED, NOT_RESOLVED = "supported", "not supported", "not resolved"
# a stage's config fields that are no part of what an arm trains
_LABELS = ("description",)


def verdict(ablation: AblationConfig, ablated_value: float, low: float, high: float) -> str:
    """The verdict on a claim from its gain's interval ``low`` .. ``high`` (positive: the stage is better)."""
    allowed = ablation.margin * abs(ablated_value) if ablation.expect == "no-worse" else 0.0
    if low > -allowed:
        return SUPPORTED
    if high < -allowed:
        return NOT_SUPPORTED
    return NOT_RESOLVED


def differing_fields(control: StageConfig, ablated: StageConfig) -> list[str]:
    """The config fields two arms differ in, which the row reports (the ablated fields, if nothing else)."""
    a, b = control.model_dump(mode="json"), ablated.model_dump(mode="json")
    return sorted(k for k in a if k not in _LABELS and a[k] != b[k])


def compare(ablation: AblationConfig, control: StageEvaluation, ablated: StageEvaluation,
            reference: Statistics) -> dict[str, Any]:
    """The claim's row: both arms' metric, the paired gain with its interval, and the verdict. Without a
    per-prompt alignment (no trusted judge) an alignment claim is not resolved, and says why."""
    if ablation.metric == "fid":
        gain = fid_gain(ablated.features, control.features, reference)
        values = control.metrics["fid"], ablated.metrics["fid"]
        key = "fid_gain"
    elif control.alignment is None or ablated.alignment is None:
        return {"verdict": NOT_RESOLVED, "why": "no per-prompt alignment: the judge refused or there is none"}
    else:
        gain = alignment_gain(ablated.alignment, control.alignment)
        values = control.metrics["alignment"], ablated.metrics["alignment"]
        key = "alignment_gain"
    low, high = gain[f"{key}_low"], gain[f"{key}_high"]
    return {"stage_value": values[0], "ablation_value": values[1], "gain": gain[key], "gain_low": low,
            "gain_high": high, "gain_share": gain[f"{key}_share"],
            "verdict": verdict(ablation, values[1], low, high)}


def arm_metrics(evaluation: StageEvaluation) -> dict[str, Any]:
    """What the row shows of one arm besides the claim's metric."""
    keep = ("fid", "alignment", "alignment_shuffled", "clip_score", "seconds_per_image")
    return {k: evaluation.metrics[k] for k in keep if k in evaluation.metrics}


def table(rows: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """``metrics/ablations.json``'s rows as a table: one row per claim."""

    def number(value: Any, digits: int = 3) -> str:
        return f"{value:.{digits}f}" if isinstance(value, int | float) else "—"

    headers = ["claim", "metric", "stage vs ablation", "stage", "ablation", "gain [95% CI]", "train s",
               "s / image", "verdict"]
    cells = []
    for name, r in rows.items():
        control, ablated = r.get("control", {}), r.get("ablated", {})
        interval = (f"{number(r['gain'])} [{number(r['gain_low'])}, {number(r['gain_high'])}]" if "gain" in r
                    else r.get("why", "—"))
        expect = "no worse than" if r.get("expect") == "no-worse" else "better than"
        cells.append([
            r.get("claim", name), f"{r.get('metric')} ({expect} ablation"
            + (f", margin {r['margin']:.0%})" if r.get("expect") == "no-worse" else ")"),
            f"`{control.get('name')}` vs `{ablated.get('name')}`", number(r.get("stage_value")),
            number(r.get("ablation_value")), interval,
            f"{number(control.get('train_seconds'), 0)} / {number(ablated.get('train_seconds'), 0)}",
            f"{number(control.get('seconds_per_image'), 3)} / {number(ablated.get('seconds_per_image'), 3)}",
            r.get("verdict", "—"),
        ])
    return headers, cells
