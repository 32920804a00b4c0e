"""pixart.tracking against the embedded store (SQLite file + local artifacts in a temp folder)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from pixart import tracking
from pixart.settings import ROOT, Settings

PARENT_TAG = "mlflow.parentRunId"


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(root=tmp_path_factory.mktemp("tracking"), tracking_uri="", artifact_location="")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking.client, "_context", None)
        mp.delenv(tracking.PARENT_RUN_ENV, raising=False)
        tracking.configure(settings)
        yield settings


@pytest.fixture
def client(embedded: Settings):
    return tracking.client._ctx().client


def make_checkpoint(folder: Path, stage: str) -> Path:
    """A stand-in checkpoint folder: stage.json plus bytes that differ per stage, in a sub-folder."""
    (folder / "transformer").mkdir(parents=True)
    (folder / "stage.json").write_text(json.dumps({"stage": stage}))
    (folder / "transformer" / "weights.bin").write_bytes(hashlib.sha256(stage.encode()).digest() * 512)
    return folder


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_chained_stages_register_versions_with_aliases_and_lineage(embedded, client, tmp_path):
    with tracking.curriculum_run("smoke", {"profile": "smoke"}) as parent:
        with tracking.stage_run("base", {"stage": {"steps": 2}}, data_version="d1") as base_run:
            v1 = tracking.register_checkpoint(
                base_run,
                make_checkpoint(tmp_path / "base", "base"),
                stage="base",
                weak_input_version=None,
                data_version="d1",
            )
        with tracking.stage_run("vae-adapt", {"stage": {"steps": 3}}, data_version="d1") as adapt_run:
            v2 = tracking.register_checkpoint(
                adapt_run,
                make_checkpoint(tmp_path / "adapt", "vae-adapt"),
                stage="vae-adapt",
                weak_input_version=v1,
                data_version="d1",
            )
    assert tracking.PARENT_RUN_ENV not in os.environ

    assert v1 != v2
    assert tracking.get_alias_version("base") == v1
    assert tracking.get_alias_version("vae-adapt") == v2
    adapt = tracking.model_version("models:/pixart-sigma@vae-adapt")
    assert (adapt["stage"], adapt["weak_input"], adapt["run_id"], adapt["data_version"]) == (
        "vae-adapt",
        v1,
        adapt_run.run_id,
        "d1",
    )
    assert adapt["git_commit"] == tracking.git_commit()
    assert adapt["source"] == f"{adapt_run.artifact_uri}/checkpoint"

    chain = tracking.lineage("models:/pixart-sigma@vae-adapt")
    assert [(v["stage"], v["version"]) for v in chain] == [("vae-adapt", v2), ("base", v1)]

    for run in (base_run, adapt_run):
        info = client.get_run(run.run_id)
        assert info.data.tags[PARENT_TAG] == parent
        assert info.info.status == "FINISHED"
    assert client.get_run(parent).info.status == "FINISHED"

    from pixart.cli import app

    result = CliRunner().invoke(app, ["lineage", "models:/pixart-sigma@vae-adapt"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 2 and "vae-adapt" in rows[0] and rows[1].split("│")[1].strip() == "base"
    assert base_run.run_id in rows[1] and adapt_run.run_id in rows[0]


def test_lineage_of_an_unknown_alias_or_version_names_it(embedded):
    from pixart.cli import app

    result = CliRunner().invoke(app, ["lineage", "models:/pixart-sigma@no-such-stage"])
    assert result.exit_code == 2
    assert "no-such-stage" in result.output
    with pytest.raises(LookupError, match="no version 999 of 'pixart-sigma'"):
        tracking.model_version("999")


def test_stage_runs_without_parent_id_share_the_parent_of_their_curriculum_and_commit(embedded, client):
    with tracking.stage_run("a", {"profile": "keyed"}) as first:
        pass
    with tracking.stage_run("b", {}, curriculum="keyed") as second:
        pass
    with tracking.stage_run("c", {}, curriculum="other") as third:
        pass
    parents = [client.get_run(r.run_id).data.tags[PARENT_TAG] for r in (first, second, third)]
    assert parents[0] == parents[1] != parents[2]
    tags = client.get_run(parents[0]).data.tags
    assert (tags["curriculum"], tags["git_commit"]) == ("keyed", tracking.git_commit())

    with pytest.raises(ValueError, match="curriculum"), tracking.stage_run("d", {}):
        pass


def test_parent_run_id_from_the_environment_must_exist(embedded, monkeypatch):
    monkeypatch.setenv(tracking.PARENT_RUN_ENV, "0123456789abcdef")
    with (
        pytest.raises(LookupError, match=tracking.PARENT_RUN_ENV),
        tracking.stage_run("e", {}, curriculum="smoke"),
    ):
        pass


def test_stage_run_logs_flat_params_metrics_images_and_tags(embedded, client):
    params = {"train": {"lr": 1e-3, "betas": [0.9, 0.99]}, "note": "x" * 7000}
    with tracking.stage_run("logged", params, curriculum="smoke", data_version="abc") as run:
        run.log_metrics({"loss": 0.5, "lr": 1e-3}, step=1)
        run.log_metrics({"loss": 0.25, "lr": 1e-3}, step=2)
        run.log_image(Image.new("RGB", (8, 8), "red"), "samples", step=2)
        run.log_dict({"a": 1}, "config.json")
        run.set_tags({"weak_input": "base"})
    got = client.get_run(run.run_id)
    assert got.data.params["train.lr"] == "0.001"
    assert got.data.params["train.betas"] == "[0.9, 0.99]"
    assert len(got.data.params["note"]) == 6000 and got.data.params["note"].endswith("...")
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 0.5), (2, 0.25)]
    assert {k: got.data.tags[k] for k in ("stage", "data_version", "curriculum", "weak_input")} == {
        "stage": "logged",
        "data_version": "abc",
        "curriculum": "smoke",
        "weak_input": "base",
    }
    assert {a.path for a in client.list_artifacts(run.run_id)} >= {"images", "config.json"}
    assert got.info.status == "FINISHED"


def test_stage_run_samples_system_metrics(embedded, client, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with tracking.stage_run("system", {}, curriculum="smoke") as run:
        deadline = time.monotonic() + 10
        while not any(k.startswith("system/cpu") for k in client.get_run(run.run_id).data.metrics):
            assert time.monotonic() < deadline, "no system/* metrics after 10 s"
            time.sleep(0.2)


def test_stage_run_that_raises_is_marked_failed(embedded, client):
    with (
        pytest.raises(RuntimeError, match="diverged"),
        tracking.stage_run("broken", {}, curriculum="smoke") as run,
    ):
        raise RuntimeError("diverged")
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_disabled_stage_run_on_nonzero_rank_logs_nothing(embedded, client, tmp_path):
    experiment = tracking.client._ctx().experiment_id
    before = len(client.search_runs([experiment], max_results=1000))
    with tracking.stage_run("rank1", {"a": 1}, curriculum="rank1-only", enabled=False) as run:
        run.log_params({"b": 2})
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_image(Image.new("RGB", (8, 8)), "samples", step=1)
        run.log_dict({"a": 1}, "x.json")
        run.log_file(make_checkpoint(tmp_path / "c", "rank1") / "stage.json")
        run.set_tags({"x": "y"})
    assert not run.enabled and run.run_id is None
    assert len(client.search_runs([experiment], max_results=1000)) == before
    with pytest.raises(RuntimeError, match="disabled"):
        tracking.register_checkpoint(
            run, tmp_path / "c", stage="rank1", weak_input_version=None, data_version="d"
        )


def test_resolve_weak_input_downloads_from_the_registry_when_the_local_folder_is_missing(embedded, tmp_path):
    source = make_checkpoint(tmp_path / "registered", "w-src")
    with tracking.stage_run("w-src", {}, curriculum="smoke") as run:
        version = tracking.register_checkpoint(
            run, source, stage="w-src", weak_input_version=None, data_version="d"
        )
    outputs = tmp_path / "outputs"

    downloaded = tracking.resolve_weak_input("w-src", outputs)
    assert downloaded == embedded.path(embedded.cache_dir) / "registry" / "pixart-sigma" / version
    assert file_hashes(downloaded) == file_hashes(source)
    assert tracking.resolve_weak_input("w-src", outputs) == downloaded

    local = make_checkpoint(outputs / "w-src", "local")
    assert tracking.resolve_weak_input("w-src", outputs) == local

    with pytest.raises(FileNotFoundError, match="weak input 'never-trained'"):
        tracking.resolve_weak_input("never-trained", outputs)


def test_version_metrics_and_promotion(embedded, client, tmp_path):
    with tracking.stage_run("promo", {}, curriculum="smoke") as run:
        version = tracking.register_checkpoint(
            run,
            make_checkpoint(tmp_path / "p", "promo"),
            stage="promo",
            weak_input_version=None,
            data_version="d",
        )
    tracking.log_version_metrics("promo", {"fid": 12.5, "clip_score": 0.27})
    assert tracking.model_version(version)["metrics"] == {"fid": 12.5, "clip_score": 0.27}
    assert [m.value for m in client.get_metric_history(run.run_id, "fid")] == [12.5]

    assert tracking.get_alias_version("champion-test") is None
    tracking.set_alias("champion-test", version)
    assert tracking.get_alias_version("champion-test") == version
    assert set(tracking.model_version("champion-test")["aliases"]) == {"promo", "champion-test"}


def test_git_commit_is_the_short_head_or_unknown_outside_git(tmp_path):
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
    ).stdout.strip()
    assert tracking.git_commit() == (head or "unknown")
    assert tracking.git_commit(tmp_path) == "unknown"


def test_flatten_params_rejects_keys_longer_than_mlflow_allows():
    assert tracking.flatten_params({"a": {"b": {"c": None}}, "d": 1}) == {"a.b.c": "None", "d": "1"}
    with pytest.raises(ValueError, match="aaaa"):
        tracking.flatten_params({"a" * 300: 1})


def test_a_stage_run_tags_the_unfinished_attempt_it_resumes_and_leaves_a_finished_one_alone(embedded, client,
                                                                                              tmp_path):
    run_file = tmp_path / "state/run.json"
    with (pytest.raises(RuntimeError, match="export failed"),
          tracking.stage_run("resumable", {}, curriculum="smoke", run_file=run_file) as failed):
        raise RuntimeError("export failed")
    assert json.loads(run_file.read_text())["run_id"] == failed.run_id
    with tracking.stage_run("resumable", {}, curriculum="smoke", run_file=run_file) as retry:
        pass
    closed = client.get_run(failed.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags[tracking.RESUMED_BY_TAG] == retry.run_id
    with tracking.stage_run("resumable", {}, curriculum="smoke", run_file=run_file):
        pass
    assert tracking.RESUMED_BY_TAG not in client.get_run(retry.run_id).data.tags  # it had finished


def test_a_store_that_does_not_answer_is_named_with_its_password_masked(embedded, monkeypatch):
    from tests.servers import free_port

    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # where the settings put them
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    port = free_port()
    down = Settings(root=embedded.root, tracking_uri=f"http://pixart:hunter2@127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingUnavailable, match=rf"MLflow at http://\*\*\*@127.0.0.1:{port} did not answer "
                       r"while looking up experiment .*Connection refused") as failed:
        tracking.configure(down)
    assert "hunter2" not in str(failed.value)
    tracking.configure(embedded)


def test_metrics_the_store_does_not_take_are_dropped_counted_and_warned_about_once(embedded, client, monkeypatch,
                                                                                    caplog):
    from mlflow.exceptions import MlflowException

    log_batch = client.log_batch

    def refuse_steps_2_and_3(run_id, metrics=(), **kwargs):
        if any(m.step in (2, 3) for m in metrics):
            raise MlflowException("API request failed: 503")
        return log_batch(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(client, "log_batch", refuse_steps_2_and_3)
    with (caplog.at_level("WARNING", logger=tracking.__name__),
          tracking.stage_run("flaky", {}, curriculum="smoke") as run):
        for step in range(1, 5):
            run.log_metrics({"loss": 1.0 / step}, step=step)
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [1, 4]
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.tags[tracking.METRICS_DROPPED_TAG] == "2"
    assert [r.getMessage() for r in caplog.records if "did not take the metrics" in r.getMessage()] == [
        "MLflow at " + embedded.public_tracking_uri + " did not take the metrics of stage flaky at step 2 "
        "(MlflowException: API request failed: 503); metrics it cannot take are dropped and training goes on"]


def test_the_ui_opens_on_runs_names_the_parent_run_and_describes_each_version(embedded, client, tmp_path):
    experiment = client.get_experiment(tracking.client._ctx().experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"  # not the GenAI overview
    with (tracking.curriculum_run("smoke", {"profile": "smoke"}) as parent,
          tracking.stage_run("aes-512", {"stage": {"steps": 2}}, data_version="d1") as run):
        version = tracking.register_checkpoint(
            run, make_checkpoint(tmp_path / "aes", "aes-512"), stage="aes-512", weak_input_version=None,
            data_version="d1", description="aes-512: high-aesthetic data; weak input align (version 3)")
    assert client.get_run(parent).info.run_name == f"smoke @ {tracking.git_commit()}"
    tracking.log_version_metrics(version, {"fid": 12.5, "clip_score": 0.27})
    tracking.log_version_metrics(version, {"fid": 11.0})  # a PixEval re-run replaces the line, keeps the head
    described = client.get_model_version("pixart-sigma", version).description
    assert described == "aes-512: high-aesthetic data; weak input align (version 3)\nPixEval: fid 11"


def test_stage_wall_times_are_each_stages_latest_finished_run(embedded, client):
    import time

    for pause in (0.0, 0.3):
        with tracking.stage_run("timed", {}, curriculum="smoke") as run:
            run.log_metrics({"loss": 1.0 + pause}, step=1)
            run.log_metrics({"loss": 0.5 + pause}, step=2)
            time.sleep(pause)
    with pytest.raises(RuntimeError), tracking.stage_run("timed", {}, curriculum="smoke"):
        time.sleep(0.6)
        raise RuntimeError("killed")  # a failed attempt is not the stage's time
    times = tracking.stage_wall_times(["timed", "never-ran"])
    assert list(times) == ["timed"]
    assert 0.3 <= times["timed"] < 0.6, times
    assert tracking.stage_metric_history(["timed", "never-ran"], "loss") == {"timed": [(1, 1.3), (2, 0.8)]}
