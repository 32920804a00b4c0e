"""One-shot job of infra/compose.yaml (service mlflow-users): the worker's own MLflow account.

The worker must never hold the admin password: an admin can read and change every user and every
permission. As admin (MLFLOW_TRACKING_USERNAME / _PASSWORD), this creates the curriculum's
experiment and registered model, then a non-admin user with EDIT on exactly those two: EDIT creates
and updates runs, logs metrics and artifacts, creates model versions, sets aliases and version tags;
it cannot delete them nor grant anything. Re-running resets the worker's password and grants.

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=... \
    PIXART_WORKER_USER=pixart-worker PIXART_WORKER_PASSWORD=... python mlflow-users.py

It runs in the MLflow server image (mlflow only, not the project): the experiment and model names
default to pixart.settings' defaults and follow PIXART_EXPERIMENT / PIXART_REGISTERED_MODEL.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

T = TypeVar("T")
WORKER_PERMISSION = "EDIT"


def _create_or_get(create: Callable[[], T], get: Callable[[], T]) -> T:
    try:
        return create()
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return get()


def _grant(auth: AuthServiceClient, user: str, resource_type: str, resource_id: str) -> None:
    """Grant exactly WORKER_PERMISSION, also where an older grant (a MANAGE the worker got by
    creating the resource itself) is in the way: a grant is never updated in place."""
    def regrant() -> None:
        auth.revoke_user_permission(user, resource_type, resource_id)
        auth.grant_user_permission(user, resource_type, resource_id, WORKER_PERMISSION)

    _create_or_get(lambda: auth.grant_user_permission(user, resource_type, resource_id, WORKER_PERMISSION),
                   regrant)


def main() -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    user, password = os.environ["PIXART_WORKER_USER"], os.environ["PIXART_WORKER_PASSWORD"]
    experiment = os.environ.get("PIXART_EXPERIMENT") or "pixart-curriculum"
    model = os.environ.get("PIXART_REGISTERED_MODEL") or "pixart-sigma"

    auth, client = AuthServiceClient(uri), MlflowClient(uri)
    if user == os.environ.get("MLFLOW_TRACKING_USERNAME"):
        raise SystemExit(f"PIXART_WORKER_USER={user} is the admin: the worker needs an account of its own")
    _create_or_get(lambda: auth.create_user(user, password),
                   lambda: auth.update_user_password(user, password))
    auth.update_user_admin(user, False)
    experiment_id = _create_or_get(lambda: client.create_experiment(experiment),
                                   lambda: client.get_experiment_by_name(experiment).experiment_id)
    _create_or_get(lambda: client.create_registered_model(model), lambda: client.get_registered_model(model))
    _grant(auth, user, "experiment", experiment_id)
    _grant(auth, user, "registered_model", model)
    print(f"mlflow user {user}: {WORKER_PERMISSION} on experiment {experiment} ({experiment_id}) "
          f"and registered model {model}")


if __name__ == "__main__":
    main()
