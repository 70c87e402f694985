"""A version served by the user's own handler, marforge's side: its answers are judged only by what the
registry's `answers` table says of them (archiving/expected.py's Comparison), never interpreted.

Verification (archiving/verify.py `check_answers`) loads the archive as a worker does and compares its
answers on the version's samples with the expected answers recorded for them (`python -m marforge
expect`, or written by the user): each field the same, numbers within `tolerance`, `ignore`d fields
skipped. A rollout gate compares two versions by the answers' `decision` field (when the table names
one, e.g. "label"; else the whole answer, ignored fields left out) and, on a labelled eval set, scores
the decision against the labels (accuracy). The parts every task has (marforge/tasks/__init__.py) are
here with the same names; the formats are the version's own: its exported file's, or eager.
"""

import json
from dataclasses import dataclass
from typing import Any

from marforge import scores
from marforge.archiving import expected
from marforge.archiving.variants import Tolerance
from marforge.tasks import CUSTOM

TOLERANCES = {"eager": Tolerance(0.0, 1.0), "torchscript": Tolerance(0.0, 1.0), "onnx": Tolerance(0.0, 1.0),
              "export": Tolerance(0.0, 1.0)}  # the formats an own handler's version is archived in: its source's
UNAVAILABLE = ("a version served by its own handler is archived from its source as it is (a model definition and "
               "state_dict as eager, an exported file as its kind): marforge cannot know how the handler would "
               "feed a model converted to another format")


@dataclass(frozen=True)
class AnswersConfig:
    """What marforge knows of an own handler's answers: the archive's recorded comparison."""

    comparison: expected.Comparison
    task: str = CUSTOM


def config_from(stamp: dict[str, Any], where: str) -> AnswersConfig:
    """The AnswersConfig an archive's format stamp (model-config.yaml's marforge section) records."""
    return AnswersConfig(expected.Comparison.from_table(stamp.get("answers") or {}, where, where))


def gate_metric(task: str) -> tuple[str, str, str]:
    """(the metric a labelled rollout gate judges, its rules' stem, its name): the decision's accuracy."""
    return "accuracy", "accuracy", "accuracy"


def decision(answer: Any, config: AnswersConfig) -> Any:
    """What two versions' answers are compared by: the `decision` field, else the whole answer without
    its ignored fields (as canonical JSON, so that it compares by equality)."""
    comparison = config.comparison
    if comparison.decision:
        return expected.field(answer, comparison.decision)
    return json.dumps(expected.without_ignored(answer, comparison), sort_keys=True)


def quality(config: AnswersConfig, bodies: list[Any], labels: list[Any]) -> dict[str, float | None]:
    """{"accuracy": the decision's} on a labelled eval set when the comparison names a decision field."""
    if not config.comparison.decision or not labels or any(label is None for label in labels):
        return {}
    return {"accuracy": scores.accuracy([decision(body, config) for body in bodies], labels)}


def sample_summary(answer: Any, config: AnswersConfig) -> dict[str, Any]:
    """A sample's line in the verification record: its decision, or its whole answer."""
    if config.comparison.decision:
        return {config.comparison.decision: expected.field(answer, config.comparison.decision)}
    return {"answer": answer}
