"""The faults suite's fixtures and its report: every case records the fault, the outcome and the data
it lost (bytes, measured: the files that existed before the fault and are gone or changed after), and
the session ends with one table of them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pixart import tracking
from pixart.settings import Settings
from tests.faults import harness


@dataclass
class Row:
    fault: str
    outcome: str
    lost: str
    at_risk: str


_ROWS: list[Row] = []
_RECORDED: set[str] = set()


@pytest.fixture
def record(request):
    """``record(fault, outcome, before, after)``, with ``harness.snapshot``s of what the fault put at
    risk taken before and after it: one row of the table. Returns the bytes lost."""

    def add(fault: str, outcome: str, before: dict, after: dict) -> int:
        lost = harness.lost_bytes(before, after)
        _ROWS.append(Row(fault, outcome, str(lost), str(sum(size for size, _ in before.values()))))
        _RECORDED.add(request.node.nodeid)
        return lost

    return add


@pytest.fixture(autouse=True)
def fast_failing_store(monkeypatch):
    """A store that does not answer fails a request at once, not after MLflow's ~4 min of retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture
def embedded(tmp_path):
    """Tracking on the SQLite file of ``tmp_path``, as a stage process with PIXART_ROOT=tmp_path has it."""
    tracking.configure(Settings(root=tmp_path))
    return tmp_path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call" and report.failed and item.nodeid not in _RECORDED:
        _ROWS.append(Row(item.name, "TEST FAILED", "?", "?"))
    return report


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    header = Row("fault", "outcome", "data lost (bytes)", "of bytes at risk")
    fields = ("fault", "outcome", "lost", "at_risk")
    widths = [max(len(getattr(r, f)) for r in (header, *_ROWS)) for f in fields]
    terminalreporter.section("faults survived")
    for row in (header, *_ROWS):
        terminalreporter.write_line("  ".join(getattr(row, f).ljust(w) for f, w in zip(fields, widths, strict=True)))
