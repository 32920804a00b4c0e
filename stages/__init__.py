"""Thin entry points, one per curriculum stage kind (``python -m stages.<kind>``), over ``pixart``.

A stage process started with $PIXART_WORKER hands itself to that worker (``pixart.worker``) here,
before any heavy import."""

from pixart.worker import delegate

delegate(__name__)
# Not delegated: the project's environment, before the stage module imports what reads it at import
# (mlflow, transformers). Imported only now, so that a delegated stage never pays for pydantic.
from pixart.settings import apply_stage_env

apply_stage_env()
