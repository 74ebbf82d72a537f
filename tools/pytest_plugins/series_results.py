"""pytest plugin loaded by tools/regress.py inside an upstream's environment.

Writes one JSON record per test (node id, outcome, whether it is marked `keeps_upstream`) to the
file named by $SERIES_RESULTS_JSON, so the regression tool can judge every test in both
directions.  Imports nothing but the standard library: it runs in environments we do not own.
"""
import json
import os

_records = {}


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "keeps_upstream: upstream behaviour the patch must not change "
                   "(passes unpatched and patched)")


def pytest_runtest_logreport(report):
    rec = _records.setdefault(report.nodeid, {
        "nodeid": report.nodeid, "outcome": "passed",
        "keeps_upstream": "keeps_upstream" in report.keywords, "message": ""})
    if report.outcome == "skipped" and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        rec["message"] = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    elif report.outcome == "failed":
        rec["outcome"] = "failed" if report.when == "call" else "error"
        rec["message"] = (report.longreprtext or "").strip().splitlines()[-1:][0] if report.longreprtext else ""


def pytest_collectreport(report):
    if report.failed:
        _records[report.nodeid or "<collection>"] = {
            "nodeid": report.nodeid or "<collection>", "outcome": "error", "keeps_upstream": False,
            "message": (report.longreprtext or "").strip().splitlines()[-1:][0] if report.longreprtext else ""}


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("SERIES_RESULTS_JSON")
    if path:
        with open(path, "w") as f:
            json.dump(list(_records.values()), f, indent=1)
