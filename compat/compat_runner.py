"""A DiscoverRunner that also writes each test's outcome to a JSON file.

Counting dots or parsing the text output can't say *which* test changed between the
stock and the pooled engine; this can. With ``--parallel`` the workers' results are
replayed into the parent's result object, so recording there sees every test.
"""

import json
import os
import unittest

from django.test.runner import DiscoverRunner

# Worse outcomes win when one test reports several (sub-tests).
_RANK = {
    "ok": 0,
    "skipped": 1,
    "expected_failure": 1,
    "unexpected_success": 2,
    "failure": 3,
    "error": 4,
}


class RecordingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes = {}

    def _record(self, test, outcome, detail=""):
        test_id = test.id()
        old = self.outcomes.get(test_id)
        if old is None or _RANK[outcome] >= _RANK[old[0]]:
            self.outcomes[test_id] = (outcome, detail[-2000:])

    def _err(self, test, err):
        try:
            return self._exc_info_to_string(err, test)
        except Exception:  # a replayed error can come without a traceback
            return repr(err)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record(test, "failure", self._err(test, err))

    def addError(self, test, err):
        super().addError(test, err)
        self._record(test, "error", self._err(test, err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record(test, "skipped", str(reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record(test, "expected_failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record(test, "unexpected_success")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._record(test, "failure" if failed else "error", self._err(test, err))


class RecordingRunner(DiscoverRunner):
    def get_resultclass(self):
        return super().get_resultclass() or RecordingResult

    def run_suite(self, suite, **kwargs):
        result = super().run_suite(suite, **kwargs)
        path = os.environ.get("DPB_COMPAT_RESULT")
        if path and isinstance(result, RecordingResult):
            from django.db import connections

            # Proof of what ran: the wrapper classes actually in use.
            engines = {alias: type(connections[alias]).__module__ for alias in connections}
            with open(path, "w") as f:
                json.dump(
                    {"testsRun": result.testsRun, "outcomes": result.outcomes, "engines": engines},
                    f,
                    indent=0,
                    sort_keys=True,
                )
        return result
