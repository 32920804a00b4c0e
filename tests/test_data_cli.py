"""`pixart data ...` and `pixart caption-stats` end to end through the typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pixart.cli import app
from pixart.data.format import load_dataset

runner = CliRunner()


def test_generate_import_and_caption_stats(tmp_path):
    result = runner.invoke(app, ["data", "generate", "--out", str(tmp_path / "gen"), "--n", "30", "--resolution", "24"])
    assert result.exit_code == 0, result.output
    entries = load_dataset(tmp_path / "gen")
    assert len(entries) == 30 and all(min(e.height, e.width) == 24 for e in entries)

    lines = [{"path": str(tmp_path / "gen" / e.path), "caption": e.prompt} for e in entries[:5]]
    lines.append({"path": "nowhere.png", "caption": "lost"})
    (tmp_path / "x.jsonl").write_text("\n".join(map(json.dumps, lines)))
    result = runner.invoke(app, ["data", "import-jsonl", str(tmp_path / "x.jsonl"), "--out", str(tmp_path / "imp")])
    assert result.exit_code == 0, result.output
    assert "imported 5" in result.output and "skipped 1 (missing_image)" in result.output

    result = runner.invoke(app, ["caption-stats", "--data", str(tmp_path / "gen"), "--json", str(tmp_path / "cs.json")])
    assert result.exit_code == 0, result.output
    stats = json.loads((tmp_path / "cs.json").read_text())
    assert stats["dense"]["avg_nouns_per_image"] > stats["raw"]["avg_nouns_per_image"]


def test_bad_input_exits_with_a_message(tmp_path):
    result = runner.invoke(app, ["data", "import-folder", str(tmp_path / "absent"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not a folder" in result.output
    result = runner.invoke(app, ["caption-stats", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "data_info.json: not found" in result.output
