"""Errors get every field at construction: a rollout's or soak's report travels with the error."""

import argparse
import json

import pytest

from marforge import errors
from marforge.errors import ApiError, MarforgeError, MeasurementFailed, Rejected, RolledBack, ServerError
from marforge.serve import rollout


def test_report_is_a_constructor_argument_of_every_error():
    assert MarforgeError("what", "next").report is None
    assert MeasurementFailed("soak failed", "read it", report={"r": 1}).report == {"r": 1}
    api = ApiError(503, "http://x/models", " busy ", "make serve", report="so far")
    assert (api.report, api.status, api.url, api.body, api.message, api.hint) == (
        "so far", 503, "http://x/models", " busy ", "HTTP 503 from http://x/models: busy", "make serve")


@pytest.mark.parametrize("error", [
    Rejected("no", "make archive"), RolledBack("watch failed"), ServerError("down", "make serve"),
    errors.ArchiveError("bad", None), ApiError(500, "http://x/y", "boom", "read the log")])
def test_with_report_is_the_same_error_carrying_the_report(error):
    carried = error.with_report("the report")
    assert carried is not error and type(carried) is type(error) and carried.report == "the report"
    assert (str(carried), carried.message, carried.hint, carried.exit_code) == (
        str(error), error.message, error.hint, error.exit_code)
    assert error.report is None  # the original is left as it was
    if isinstance(error, ApiError):
        assert (carried.status, carried.url, carried.body) == (error.status, error.url, error.body)


def test_a_failing_rollout_step_raises_an_error_built_with_the_report():
    report, lines = rollout.RolloutReport("fashion", "2.0"), []
    original = Rejected("fashion 2.0: the gate failed", "read the gate's table")
    with pytest.raises(Rejected) as caught, rollout._step(report, "gate", lines.append):
        raise original
    assert caught.value is not original and caught.value.__cause__ is original
    assert caught.value.report is report and original.report is None
    assert (caught.value.message, caught.value.hint, caught.value.exit_code) == (original.message, original.hint, 3)
    assert report.steps == [{"step": "gate", "seconds": report.steps[0]["seconds"], "ok": False,
                             "detail": "fashion 2.0: the gate failed"}]
    assert len(lines) == 1 and "FAILED" in lines[0]


def test_the_cli_prints_the_report_an_error_was_built_with(capsys, monkeypatch):
    from marforge import cli

    report = rollout.RolloutReport("fashion", "2.0", outcome="rejected")

    def fails(args):
        raise Rejected("refused", "make archive", report=report)

    class Parser:
        def parse_args(self, argv=None):
            return argparse.Namespace(json=True, func=fails)

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main([]) == 3
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"error": "refused", "next": "make archive", "exit_code": 3, "report": report.to_dict()}
