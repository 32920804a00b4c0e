"""Thin entry points, one per curriculum stage kind (``python -m stages.<kind>``), over ``pixart``.

A stage process started with $PIXART_WORKER hands itself to that worker (``pixart.worker``) here,
before any heavy import."""

from pixart.worker import delegate

delegate()
