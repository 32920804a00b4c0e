"""The repository's own recorded results: docs/results.md is what the committed reference
(docs/results/metrics/, a fresh-clone run's metrics and dvc.lock) renders, and DVC shows that
reference on any checkout. Re-render with `pixart report` after a change that makes a stage stale;
record a new run with `pixart report --record`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pixart import report
from pixart.config import load_profile

REPO = Path(__file__).resolve().parent.parent
DVC = Path(sys.executable).parent / "dvc"


def test_the_committed_results_page_is_what_the_reference_renders():
    report.check(REPO)  # raises pixart.rendered.Drift naming the page and the command that fixes it


def test_the_reference_holds_every_stage_of_the_profile_it_was_recorded_from():
    pixeval = json.loads((REPO / report.METRICS / "pixeval.json").read_text())
    _, profile = load_profile(None, REPO / "params.yaml")
    assert set(pixeval) == set(profile.stages)
    lock = (REPO / report.METRICS / report.LOCK.name).read_text()
    assert all(f"\n  {stage}:\n" in lock for stage in profile.stages)
    # and one row per claim of its ablations, each from the arms its lock records
    rows = json.loads((REPO / report.METRICS / "ablations.json").read_text())
    assert set(rows) == set(profile.claims())
    assert all(f"\n  {row[arm]['name']}:\n" in lock for row in rows.values() for arm in ("control", "ablated"))


def test_dvc_metrics_show_lists_the_reference_on_a_checkout_without_a_run():
    shown = subprocess.run([str(DVC), "metrics", "show", "--json"], cwd=REPO, capture_output=True, text=True, check=True,
                           timeout=300)
    data = json.loads(shown.stdout)
    files = data[""]["data"]  # "" is the workspace
    reference = files[f"{report.METRICS}/pixeval.json"]["data"]
    recorded = json.loads((REPO / report.METRICS / "pixeval.json").read_text())
    assert reference["align"]["alignment"] == recorded["align"]["alignment"]
