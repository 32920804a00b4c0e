"""Secrets never shown: a password in the tracking URI or an S3 key in the environment reaches no table,
error, MLflow param or tag, nor Prefect artifact."""

from __future__ import annotations

import dataclasses
import os
import traceback

import mlflow
import pytest
from servers import free_port
from typer.testing import CliRunner

from flows.artifacts import StageRecord, links_markdown
from pixart import tracking
from pixart.cli import app
from pixart.secrets import SecretURI, mask_uri, split_credentials
from pixart.settings import Settings

PASSWORD = "Hunter2-tracking-pw"
S3_SECRET = "Wj4l-aws-secret-key"
HTTP_URI = f"http://worker:{PASSWORD}@mlflow.example:5000"
DB_URI = f"postgresql+psycopg://pixart:{PASSWORD}@postgres:5432/mlflow"
SECRETS = (PASSWORD, S3_SECRET)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


@pytest.fixture
def secret_env(monkeypatch):
    """An environment such as a worker's: credentials for MLflow, S3, Prefect; MLflow's own variables
    recorded so that whatever a test moves there is undone."""
    monkeypatch.setenv("PIXART_TRACKING_URI", HTTP_URI)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "pixart-dvc")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("PIXART_AWS_SECRET_ACCESS_KEY", S3_SECRET)  # once a setting, now none
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "worker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", f"pixart:{PASSWORD}")


@pytest.mark.parametrize(("uri", "shown"), [
    ("http://user:pass@host:5000", "http://***@host:5000"),
    ("https://token@host/prefix", "https://***@host/prefix"),
    ("postgresql+psycopg://pixart:pa/ss?w@postgres:5432/mlflow", "postgresql+psycopg://***@postgres:5432/mlflow"),
    ("http://user:p@ss@host/x", "http://***@host/x"),
    ("s3://bucket/key?X-Amz-Credential=AKIA&X-Amz-Signature=abc&part=1",
     "s3://bucket/key?X-Amz-Credential=***&X-Amz-Signature=***&part=1"),
    ("http://host:5000", "http://host:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("models:/pixart-sigma@aes-1024", "models:/pixart-sigma@aes-1024"),
    ("/a/local/path", "/a/local/path"),
    ("", ""),
])
def test_mask_uri_hides_user_info_and_signed_queries_and_leaves_the_rest(uri, shown):
    assert mask_uri(uri) == shown


def test_split_credentials_decodes_what_an_http_client_would_send():
    assert split_credentials("http://us%40er:p%2Fw@host:5000/p?q=1") == ("http://host:5000/p?q=1", "us@er", "p/w")
    assert split_credentials("http://host:5000") == ("http://host:5000", None, None)


def test_settings_show_masks_the_tracking_password_and_holds_no_s3_key(secret_env, monkeypatch):
    monkeypatch.setenv("PIXART_ARTIFACT_LOCATION", f"s3://mlflow/x?X-Amz-Signature={S3_SECRET}")
    result = CliRunner().invoke(app, ["settings", "show"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert_no_secret(result.output)
    assert "http://***@mlflow.example:5000" in result.output


def test_a_settings_object_prints_dumps_and_flattens_without_its_password():
    settings = Settings(tracking_uri=DB_URI)
    assert isinstance(settings.tracking_uri, SecretURI)
    for shown in (repr(settings), str(settings), str(settings.model_dump(mode="json")),
                  str(settings.public_dict()),
                  str(tracking.flatten_params({"settings": settings.model_dump()})),
                  str(tracking.flatten_params(settings.public_dict())), settings.public_tracking_uri):
        assert_no_secret(shown)
    assert settings.public_tracking_uri == "postgresql+psycopg://***@postgres:5432/mlflow"
    assert settings.resolved_tracking_uri == DB_URI  # SQLAlchemy needs it


def test_http_credentials_reach_mlflow_beside_the_uri_not_inside_it(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone-else")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "older")
    settings = Settings(tracking_uri=HTTP_URI)
    assert settings.resolved_tracking_uri == "http://mlflow.example:5000"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("worker", PASSWORD)


@pytest.fixture
def restore_mlflow(monkeypatch):
    """configure() points mlflow's process-wide URIs at the settings it gets: put them back."""
    monkeypatch.setattr(tracking.client, "_context", None)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(key, raising=False)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


def test_an_unreachable_tracking_server_names_no_password(secret_env, restore_mlflow, monkeypatch, tmp_path,
                                                          capfd):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(Exception) as err:
        unreachable = f"http://worker:{PASSWORD}@127.0.0.1:{free_port()}"
        tracking.configure(Settings(root=tmp_path, tracking_uri=unreachable))
    chain, seen = [], err.value
    while seen is not None:  # suppressed contexts too: a debugger or a logger may print them
        chain.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    assert_no_secret("\n".join(chain + traceback.format_exception(err.value)))
    assert "127.0.0.1" in str(err.value)
    out, errors = capfd.readouterr()
    assert_no_secret(out + errors)


def test_registry_errors_name_the_store_with_its_password_masked(restore_mlflow, monkeypatch, tmp_path):
    tracking.configure(Settings(root=tmp_path, tracking_uri="", artifact_location=""))
    # The messages name the URI of the settings in use: one whose password a database URI must keep.
    monkeypatch.setattr(tracking.client, "_context", dataclasses.replace(tracking.client._ctx(), settings=Settings(
        root=tmp_path, tracking_uri=DB_URI)))
    for call in (lambda: tracking.model_version("no-such-alias"), lambda: tracking.model_version("99"),
                 lambda: tracking.resolve_weak_input("no-such-stage", tmp_path / "outputs")):
        with pytest.raises((LookupError, FileNotFoundError)) as err:
            call()
        assert_no_secret(str(err.value))
        assert "postgresql+psycopg://***@postgres:5432/mlflow" in str(err.value)


def test_stage_run_params_and_tags_hold_no_secret_of_the_environment(secret_env, restore_mlflow, tmp_path):
    tracking.configure(Settings(root=tmp_path, tracking_uri="", artifact_location=""))
    with (
        tracking.curriculum_run("tiny", {"profile": "tiny"}) as parent_id,
        tracking.stage_run("base", {"stage": {"steps": 1}, "profile": "tiny"}, data_version="d1") as run,
    ):
        run.set_tags({"weak_input": ""})
    client = tracking.client._ctx().client
    for run_id in (parent_id, run.run_id):
        data = client.get_run(run_id).data
        assert_no_secret(str(data.params) + str(data.tags))


def test_prefect_links_artifact_masks_the_uri_and_links_without_credentials(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "")
    records = [StageRecord("base", "3", "0123456789abcdef")]
    for uri in (HTTP_URI, Settings(tracking_uri=HTTP_URI).resolved_tracking_uri):
        markdown = links_markdown(records, uri, "1", "pixart-sigma")
        assert_no_secret(markdown)
        assert "(http://mlflow.example:5000/#/experiments/1/runs/0123456789abcdef)" in markdown
    markdown = links_markdown(records, Settings(tracking_uri=DB_URI).resolved_tracking_uri, "1", "pixart-sigma")
    assert_no_secret(markdown)
    assert "--backend-store-uri postgresql+psycopg://***@postgres:5432/mlflow" in markdown
