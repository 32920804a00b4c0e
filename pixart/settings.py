"""Where things run: the runtime environment, read from ``PIXART_*`` variables and an optional ``.env``.

What is trained lives in params.yaml (see ``pixart.config``); this module only says where the
services, folders and devices are, and (``project_env``) the environment every process of the project
runs in. The tracking URI may hold a password: it is a ``SecretURI``
(it prints masked, ``http://***@host``), ``public_tracking_uri`` and ``public_dict`` are what may be
shown, and an http(s) URI's credentials reach MLflow through its own variables, never inside the URI.

S3 credentials are no setting: boto3 (DVC, an MLflow client writing to S3) reads ``AWS_*``,
``~/.aws`` or an instance role, and DVC also ``.dvc/config.local`` (infra/dvc-remote.sh), so this
process never holds them and cannot show them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixart.secrets import SecretURI, mask_uri, split_credentials

ROOT = Path(__file__).resolve().parent.parent


def accelerator() -> str:
    """DeepSpeed's accelerator for this machine: it follows the device (a GPU pod gets cuda)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIXART_", env_file=".env", extra="ignore")

    root: Path = Field(ROOT, description="Project root; relative paths below resolve against it.")
    tracking_uri: SecretURI = Field(
        SecretURI(""),
        description="MLflow tracking URI, credentials allowed (http://user:password@host:5000); empty means "
        "the embedded SQLite file mlflow.db at the root.",
    )
    artifact_location: str = Field(
        "", description="Artifact root for new MLflow experiments; empty means ./mlartifacts."
    )
    experiment: str = Field("pixart-curriculum", description="MLflow experiment of the curriculum.")
    registered_model: str = Field("pixart-sigma", description="Registered model that holds every stage.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint (MinIO, moto) for artifacts and DVC.")
    data_dir: Path = Path("data")
    outputs_dir: Path = Path("outputs")
    metrics_dir: Path = Path("metrics")
    cache_dir: Path = Path(".cache")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    launcher: Literal["auto", "none", "deepspeed", "torchrun"] = Field(
        "auto", description="How trainers start: in-process (none), under a multi-process launcher, or auto: "
        "torchrun when the stage trains on more than one process, else in-process.",
    )
    num_gpus: int | None = Field(
        None, ge=1, description="Processes per node under a launcher; unset: the stage's num_gpus in params.yaml."
    )
    num_nodes: int = Field(1, ge=1)
    hostfile: Path | None = None
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    def path(self, p: Path) -> Path:
        return p if p.is_absolute() else self.root / p

    def _tracking_uri(self) -> str:
        return self.tracking_uri.get_secret_value() or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def resolved_tracking_uri(self) -> str:
        """The URI MLflow connects to. An http(s) URI's user and password move to this process's
        MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, where MLflow takes basic auth from, so
        the URI it prints (run links, its own errors) holds none. Other schemes keep theirs (a
        database URI needs its password): show ``public_tracking_uri``."""
        uri = self._tracking_uri()
        if not uri.startswith(("http://", "https://")):
            return uri
        uri, user, password = split_credentials(uri)
        for key, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
            if value is not None:
                os.environ[key] = value
        return uri

    @property
    def public_tracking_uri(self) -> str:
        """The tracking URI as it may be shown: credentials masked."""
        return mask_uri(self._tracking_uri())

    @property
    def resolved_artifact_location(self) -> str:
        return self.artifact_location or (self.root / "mlartifacts").as_uri()

    @property
    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def public_dict(self) -> dict[str, object]:
        """All settings with secrets masked (credentials of any URI too); safe to print or log."""
        out: dict[str, object] = {}
        for name, value in self:
            if isinstance(value, SecretStr | Path):
                value = str(value)
            out[name] = mask_uri(value) if isinstance(value, str) else value
        return out


@lru_cache
def get_settings() -> Settings:
    return Settings()


def project_env() -> dict[str, str]:
    """The environment every process of the project runs in, whoever starts it (the ``pixart``
    command and the ``dvc`` it runs, a stage, a flow, the worker, the tests): offline, no telemetry,
    each tool's state in the cache folder (``<root>/.cache`` unless ``PIXART_CACHE_DIR`` says).
    Libraries read most of these once, at import: an entry point applies them before importing any."""
    settings = Settings()  # not get_settings(): applying the defaults leaves no settings cached
    cache = settings.path(settings.cache_dir)
    return {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # without it mlflow, on import, writes ~/.config/mlflow and phones home
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # Prefect creates PREFECT_HOME on import
        "PREFECT_HOME": str(cache / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # a fresh ephemeral database takes ~23 s to start here, past Prefect's 20 s default
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DVC_SITE_CACHE_DIR": str(cache / "dvc-site"),
        "DVC_GLOBAL_CONFIG_DIR": str(cache / "dvc-global"),
        "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"),
    }


def apply_env(env: MutableMapping[str, str] | None = None) -> None:
    """Fill in ``project_env()`` where ``env`` (default: this process's environment) does not set it:
    what the user (or a test) set wins."""
    env = os.environ if env is None else env
    for key, value in project_env().items():
        env.setdefault(key, value)


def apply_stage_env(env: MutableMapping[str, str] | None = None) -> None:
    """``apply_env``, and ``DS_ACCELERATOR`` for the processes that run DeepSpeed (stages, the worker):
    apart, because choosing it imports torch, which the ``pixart`` command must not pay for."""
    apply_env(env)
    env = os.environ if env is None else env
    if "DS_ACCELERATOR" not in env:
        env["DS_ACCELERATOR"] = accelerator()
