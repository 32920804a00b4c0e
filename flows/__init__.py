"""Prefect flows over the curriculum: the same DVC stages, orchestrated, observable, resumable.

Prefect reads ``PREFECT_HOME`` when it is imported and creates the folder: point it inside the
project before any flow module imports prefect, unless the caller chose (tests, a worker).
"""

import os

from pixart.settings import get_settings

for _key, _value in {
    "PREFECT_HOME": str(get_settings().path(get_settings().cache_dir) / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # a fresh ephemeral database takes ~23 s to start here, past Prefect's 20 s default
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}.items():
    os.environ.setdefault(_key, _value)
