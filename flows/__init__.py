"""Prefect flows over the curriculum: the same DVC stages, orchestrated, observable, resumable.

Prefect reads ``PREFECT_HOME`` when it is imported and creates the folder: the project's environment
(``pixart.settings.project_env``) points it inside the project before any flow module imports prefect,
unless the caller chose (tests, a worker).
"""

from pixart.settings import apply_env

apply_env()
