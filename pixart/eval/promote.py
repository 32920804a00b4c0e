"""Promotion by PixEval: move an alias (``champion``) to the best registered version, never backwards.

Candidates are registered versions (the curriculum's stage aliases); their PixEval metrics come from
the registry (``metric.*`` tags written by ``tracking.log_version_metrics``). A rule orders them:
``fid`` = lowest FID, higher alignment breaking ties; ``alignment`` = highest alignment, lower FID
breaking ties. A candidate worse than the alias's current holder is refused, with the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pixart import tracking

Version = dict[str, Any]


def _metric(version: Version, name: str) -> float:
    # a version without the tie-break metric (a refused judge) ranks last among equals
    return version["metrics"].get(name, math.nan)


def _fid_first(v: Version) -> tuple[float, float]:
    alignment = _metric(v, "alignment")
    return _metric(v, "fid"), -alignment if not math.isnan(alignment) else math.inf


def _alignment_first(v: Version) -> tuple[float, float]:
    fid = _metric(v, "fid")
    return -_metric(v, "alignment"), fid if not math.isnan(fid) else math.inf


# rule -> (metric it needs, sort key: smaller is better)
RULES: dict[str, tuple[str, Callable[[Version], tuple[float, float]]]] = {
    "fid": ("fid", _fid_first),
    "alignment": ("alignment", _alignment_first),
}


class PromotionRefused(RuntimeError):
    """The best candidate is worse than the alias's current holder under the rule."""


@dataclass(frozen=True)
class Promotion:
    alias: str
    rule: str
    version: str  # the holder after promotion
    previous: str | None  # the holder before (None: the alias is new)
    metrics: dict[str, float]

    @property
    def moved(self) -> bool:
        return self.version != self.previous


def _describe(v: Version) -> str:
    numbers = ", ".join(f"{k} {value:.4g}" for k, value in sorted(v["metrics"].items()))
    return f"version {v['version']} ({v['stage']}: {numbers or 'no metrics'})"


def best_version(candidates: Sequence[str], rule: str = "fid") -> Version:
    """The best of ``candidates`` (aliases, versions or models:/ URIs) by ``rule``; versions not
    measured for the rule's metric are left out, and none measured is an error."""
    if rule not in RULES:
        raise ValueError(f"rule: '{rule}' is not one of {sorted(RULES)}")
    needed, key = RULES[rule]
    versions = [tracking.model_version(ref) for ref in candidates]
    measured = [v for v in versions if needed in v["metrics"]]
    if not measured:
        raise LookupError(
            f"no candidate has a '{needed}' metric ({', '.join(candidates) or 'no candidates'}); run PixEval first"
        )
    return min(measured, key=key)


def promote(candidates: Sequence[str], alias: str = "champion", rule: str = "fid") -> Promotion:
    """Point ``alias`` at the best candidate by ``rule``; raise PromotionRefused (naming both
    versions and their metrics) when that candidate is worse than the current holder."""
    best = best_version(candidates, rule)
    needed, key = RULES[rule]
    previous = tracking.get_alias_version(alias)
    if previous == best["version"]:
        return Promotion(alias, rule, previous, previous, best["metrics"])
    if previous is not None:
        holder = tracking.model_version(previous)
        # a holder never measured under the rule cannot be defended: any measured candidate replaces it
        if needed in holder["metrics"] and key(holder) < key(best):
            raise PromotionRefused(
                f"refusing to move '{alias}' by {rule}: the best candidate {_describe(best)} is worse "
                f"than the holder {_describe(holder)}"
            )
        if needed in holder["metrics"] and key(holder) == key(best):  # a tie gains nothing
            return Promotion(alias, rule, previous, previous, holder["metrics"])
    tracking.set_alias(alias, best["version"])
    return Promotion(alias, rule, best["version"], previous, best["metrics"])
