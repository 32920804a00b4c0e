"""Promotion by PixEval against a real registry (MLflow on a temp SQLite file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pixart import tracking
from pixart.eval.promote import PromotionRefused, best_version, promote
from pixart.settings import Settings


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PIXART_TRACKING_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    settings = Settings(root=tmp_path, artifact_location="")
    monkeypatch.setattr(tracking.client, "_context", None)
    monkeypatch.delenv(tracking.PARENT_RUN_ENV, raising=False)
    tracking.configure(settings)
    return settings


def evaluated(tmp_path: Path, stage: str, **metrics: float) -> str:
    """Register a small checkpoint folder for ``stage`` and put PixEval metrics on it; its version."""
    folder = tmp_path / "checkpoints" / f"{stage}-{len(list(tmp_path.glob('checkpoints/*')))}"
    folder.mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"stage": stage}))
    with tracking.stage_run(stage, {"profile": "test"}) as run:
        version = tracking.register_checkpoint(
            run, folder, stage=stage, weak_input_version=None, data_version="d"
        )
    tracking.log_version_metrics(version, metrics)
    return version


def test_promotion_moves_to_a_better_version_and_refuses_a_worse_one(registry, tmp_path) -> None:
    base = evaluated(tmp_path, "base", fid=30.0, alignment=0.4)
    first = promote(["base"])
    assert (first.version, first.previous, first.moved) == (base, None, True)
    assert tracking.get_alias_version("champion") == base

    align = evaluated(tmp_path, "align", fid=20.0, alignment=0.6)
    moved = promote(["base", "align"])
    assert (moved.version, moved.previous) == (align, base)
    assert tracking.get_alias_version("champion") == align

    # align is trained again and comes out worse: its alias moves, the champion must not
    retrained = evaluated(tmp_path, "align", fid=25.0, alignment=0.7)
    assert tracking.get_alias_version("align") == retrained
    with pytest.raises(PromotionRefused, match="fid 25.*worse than the holder.*fid 20") as refusal:
        promote(["base", "align"])
    assert f"version {retrained}" in str(refusal.value) and f"version {align}" in str(refusal.value)
    assert tracking.get_alias_version("champion") == align

    # by the alignment rule the retrained version is the better one
    by_alignment = promote(["base", "align"], alias="most-aligned", rule="alignment")
    assert by_alignment.version == retrained


def test_alignment_breaks_fid_ties_and_unmeasured_versions_are_left_out(registry, tmp_path) -> None:
    low = evaluated(tmp_path, "aes-512", fid=12.0, alignment=0.5)
    high = evaluated(tmp_path, "kv-1024", fid=12.0, alignment=0.8)
    evaluated(tmp_path, "aes-1024")  # never went through PixEval
    assert best_version(["aes-512", "kv-1024", "aes-1024"])["version"] == high
    assert low != high
    with pytest.raises(LookupError, match="no candidate has a 'fid' metric"):
        best_version(["aes-1024"])
    with pytest.raises(ValueError, match="rule: 'clip'"):
        best_version(["aes-512"], rule="clip")


def test_promote_command_prints_the_numbers_and_exits_nonzero_on_refusal(registry, tmp_path) -> None:
    from pixart.cli import app

    runner = CliRunner()
    base = evaluated(tmp_path, "base", fid=30.0)
    result = runner.invoke(app, ["promote", "--profile", "tiny"])
    assert result.exit_code == 0, result.output
    assert f"champion moved: version {base} (fid 30)" in result.output

    evaluated(tmp_path, "base", fid=35.0)
    result = runner.invoke(app, ["promote", "--profile", "tiny"])
    assert result.exit_code == 1
    assert "refusing to move 'champion' by fid" in result.output
    assert tracking.get_alias_version("champion") == base
