"""SIGKILL in the middle of writing: during a checkpoint save, and during a feature build. Each kill
is real (a process of its own); the re-run resumes from what the killed one finished."""

from __future__ import annotations

import json
import signal

from pixart import tracking
from pixart.train.checkpoint import SIGKILL_IN_SAVE_ENV, ResumableState, step_tag
from tests.faults import harness


def _stage_runs(stage: str):
    ctx = tracking.client._ctx()
    return ctx.client.search_runs([ctx.experiment_id], filter_string=f"tags.stage = '{stage}'",
                                  order_by=["attributes.start_time ASC"])


def test_sigkill_during_a_checkpoint_save_resumes_from_the_previous_pointer_and_closes_the_killed_run(
        embedded, record):
    root = embedded
    harness.world(root)
    state = ResumableState(root / f"state/{harness.STAGE}")

    killed = harness.subprocess_run("train", root, "6", **{SIGKILL_IN_SAVE_ENV: "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # DeepSpeed wrote its part of step 4; the pointer still names step 2, whose files match the
    # manifest the killed run wrote when it saved them
    assert (state.dir / step_tag(4)).is_dir() and not state.manifest(step_tag(4)).exists()
    assert state.latest() == (step_tag(2), 2)
    recorded = json.loads(state.manifest(step_tag(2)).read_text())["files"]
    before = {str(state.dir / rel): (entry["size"], entry["sha256"]) for rel, entry in recorded.items()}
    after = harness.snapshot(state.dir / step_tag(2))
    assert after == before

    resumed = harness.subprocess_run("train", root, "6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    first, second = _stage_runs(harness.STAGE)
    assert (first.data.params["resumed_from_step"], second.data.params["resumed_from_step"]) == ("0", "2")
    # no zombie: the killed attempt's run is closed by the attempt that resumed it
    assert first.info.status == "KILLED"
    assert first.data.tags[tracking.RESUMED_BY_TAG] == second.info.run_id
    assert second.info.status == "FINISHED" and tracking.RESUMED_BY_TAG not in second.data.tags
    assert json.loads((root / f"outputs/{harness.STAGE}/stage.json").read_text())["step"] == 6
    record("SIGKILL during a checkpoint save", "resumed from the previous pointer; killed run KILLED", before, after)


def test_sigkill_during_a_feature_build_publishes_no_half_set_and_the_rerun_resumes(tmp_path, record, monkeypatch):
    from pixart.data import features
    from pixart.data.features import FeatureCache

    harness.feature_dataset(tmp_path)
    out = harness.build_features(tmp_path, tmp_path / "features/set", caption="raw")  # the set DVC has now
    before = harness.snapshot(out)

    killed = harness.subprocess_run("features", tmp_path, str(out), "dense", "2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    after = harness.snapshot(out)
    assert after == before  # the old set, whole: nothing of the killed build is in the out

    encoded = []
    encode = features._encode_shard
    monkeypatch.setattr(features, "_encode_shard", lambda *a, **k: encoded.append(1) or encode(*a, **k))
    harness.build_features(tmp_path, out, caption="dense")
    assert len(encoded) == harness.SHARDS - 2  # the two shards the killed build finished are kept
    cache = FeatureCache(out)
    assert cache.components["caption_kind"] == "dense" and len(cache) == harness.FEATURE_IMAGES
    record("SIGKILL during a feature build", f"old set intact; re-run encoded {len(encoded)}/{harness.SHARDS}",
           before, after)
