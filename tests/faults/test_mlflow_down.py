"""MLflow unreachable when a stage starts (a closed port), mid-stage and at registration (a real
``mlflow server`` stopped by its PID, then started again on the same port and database)."""

from __future__ import annotations

import json
import logging

import pytest

from pixart import tracking
from pixart.settings import Settings, get_settings
from pixart.train.checkpoint import step_tag
from pixart.train.trainer import train
from tests.faults import harness
from tests.servers import free_port, mlflow_server

DROP_WARNING = "did not take the metrics"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


@pytest.fixture
def served(server, tmp_path):
    """Tracking at the server (started again if a case left it stopped) in an experiment of this case's
    own, the world registered there."""
    if not server.alive():
        server.start()
    tracking.configure(Settings(root=tmp_path, tracking_uri=server.url, experiment=f"faults-{tmp_path.name}"))
    harness.world(tmp_path)
    return tmp_path


def _runs(stage: str):
    ctx = tracking.client._ctx()
    return ctx.client.search_runs([ctx.experiment_id], filter_string=f"tags.stage = '{stage}'",
                                  order_by=["attributes.start_time ASC"])


def test_mlflow_down_at_start_fails_before_the_first_step_naming_the_uri(embedded, record, monkeypatch):
    root = embedded
    harness.world(root)
    before = harness.snapshot(root)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("PIXART_ROOT", str(root))
    monkeypatch.setenv("PIXART_TRACKING_URI", f"http://pixart:hunter2@127.0.0.1:{port}")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # where the settings put them
        monkeypatch.delenv(key, raising=False)
    # a stage process: settings from its environment, tracking configured on first use
    monkeypatch.setattr(tracking.client, "_context", None)
    get_settings.cache_clear()
    try:
        with pytest.raises(tracking.TrackingUnavailable) as failed:
            train(harness.stage_job(root))
    finally:
        get_settings.cache_clear()
    message = str(failed.value)
    assert f"http://***@127.0.0.1:{port}" in message and "hunter2" not in message
    after = harness.snapshot(root)
    assert after == before  # nothing written: no state, no run.json, no output
    record("MLflow down at start", "failed before step 1, URI named", before, after)


def test_mlflow_down_mid_stage_training_goes_on_and_drops_metrics_with_one_warning(served, server, record,
                                                                                  monkeypatch, caplog):
    root = served
    job = harness.stage_job(root, steps=6)
    log_metrics = tracking.StageRun.log_metrics
    before, after = {}, {}

    def outage(run, metrics, step):  # steps 3 and 4 log while the store is down
        if step in (3, 5):
            run.close()  # what was sent before the store goes (comes back) has arrived (failed)
        if step == 3:  # the step-2 checkpoint is what the outage puts at risk
            before.update(harness.snapshot(job.state_dir / step_tag(2)))
            server.stop()
        if step == 5:
            after.update(harness.snapshot(job.state_dir / step_tag(2)))
            server.start()
        log_metrics(run, metrics, step)

    monkeypatch.setattr(tracking.StageRun, "log_metrics", outage)
    caplog.set_level(logging.WARNING, logger=tracking.__name__)
    out = train(job)
    assert harness.lost_bytes(before, after) == 0

    info = json.loads((out / "stage.json").read_text())
    assert info["model_version"]
    (run,) = _runs(harness.STAGE)
    assert run.info.status == "FINISHED"
    logged = [m.step for m in tracking.client._ctx().client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(logged) == [1, 2, 5, 6]
    assert run.data.tags[tracking.METRICS_DROPPED_TAG] == "2"
    warnings = [r.getMessage() for r in caplog.records if DROP_WARNING in r.getMessage()]
    assert len(warnings) == 1 and server.url.removeprefix("http://") in warnings[0] and "step 3" in warnings[0]
    # the checkpoints never waited for the store: every step trained, the last one saved
    assert json.loads((job.state_dir / "latest.json").read_text())["step"] == 6
    record("MLflow down mid-stage", "trained on; 2 metric batches dropped, 1 warning", before, after)


def test_mlflow_down_at_registration_keeps_checkpoint_and_export_and_a_rerun_only_registers(served, server, record,
                                                                                            monkeypatch):
    root = served
    job = harness.stage_job(root)
    register = tracking.register_checkpoint
    before: dict = {}

    def outage(*args, **kwargs):
        before.update(harness.kept(job))
        server.stop()
        return register(*args, **kwargs)

    monkeypatch.setattr(tracking, "register_checkpoint", outage)
    with pytest.raises(tracking.TrackingUnavailable) as failed:
        train(job)
    message = str(failed.value)
    assert server.url in message and str(job.out_dir) in message and "re-run the stage" in message
    after = harness.kept(job)
    assert after == before and (job.out_dir / "stage.json").is_file()

    server.start()
    monkeypatch.setattr(tracking, "register_checkpoint", register)
    out = train(job)
    assert json.loads((out / "stage.json").read_text())["model_version"]
    failed_run, rerun = _runs(harness.STAGE)
    assert rerun.data.params["resumed_from_step"] == str(harness.STEPS)  # it trained nothing
    assert not tracking.client._ctx().client.get_metric_history(rerun.info.run_id, "loss")
    # the failed attempt could not end its run while the store was down: the re-run closed it
    assert failed_run.info.status == "KILLED"
    assert failed_run.data.tags[tracking.RESUMED_BY_TAG] == rerun.info.run_id
    assert rerun.info.status == "FINISHED"
    record("MLflow down at registration", "failed after checkpoint + export; re-run registered, 0 steps",
           before, after)
