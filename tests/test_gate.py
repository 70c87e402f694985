"""The rollout gate's verdicts (serve/gate.py), on results of the shape gate.measure gives: which
checks run with a labelled eval set of one label per image, of several, and with no labels at all."""

from marforge import shipped
from marforge.registry import ROLLOUT_DEFAULTS
from marforge.serve import gate

HANDLER = {"image_size": [8, 8], "color": "grayscale", "mean": [0.5], "std": [0.5], "labels": ["x"]}

RULES = {**ROLLOUT_DEFAULTS, "min_accuracy": 0.85, "min_auroc": 0.7}


def result(**fields):
    return {"n": 4, "errors": 0, "p50_ms": 5.0, "p99_ms": 10.0, "decisions": ["a", "b", "a", "c"],
            "accuracy": None, "mean_auroc": None, **fields}


def verdict(candidate, default, labelled, task):
    config = shipped.contract().HandlerConfig.from_dict({**HANDLER, "task": task})
    reasons, checks = gate.judge(candidate, default, RULES, labelled, config)
    return reasons, {c["check"]: (c["ran"], c["passed"]) for c in checks}, checks


def test_one_label_per_image_is_gated_on_accuracy():
    reasons, ran, _ = verdict(result(accuracy=0.80), result(accuracy=0.91), True, "multiclass")
    assert reasons == ["accuracy 0.8000 is below the floor 0.8500",
                       "accuracy 0.8000 is more than 0.02 below the current default's 0.9100"]
    assert ran == {"no failed request": (True, True), "accuracy floor": (True, False), "accuracy drop": (True, False),
                   "p99": (True, True)}


def test_several_labels_per_image_are_gated_on_mean_auroc():
    reasons, ran, _ = verdict(result(mean_auroc=0.75), result(mean_auroc=0.8), True, "multilabel")
    assert reasons == ["mean AUROC 0.7500 is more than 0.02 below the current default's 0.8000"]
    assert ran["mean AUROC floor"] == (True, True) and ran["mean AUROC drop"] == (True, False)
    assert "accuracy floor" not in ran


def test_without_labels_the_gate_checks_agreement_and_says_what_it_could_not_run():
    candidate = result(decisions=[["Effusion"], [], ["Mass"], []])
    default = result(decisions=[["Effusion"], [], ["Mass", "Nodule"], []])
    reasons, ran, checks = verdict(candidate, default, False, "multilabel")
    assert reasons == ["the same decision as the default on 0.7500 of the images, below 0.9"]
    assert ran["mean AUROC"] == (False, False) and ran["agreement with the default"] == (True, False)
    [skipped] = [c for c in checks if not c["ran"]]
    assert skipped["detail"] == "no labelled eval set: the images' true labels are not known"
    assert candidate["agreement"] == 0.75


def test_failures_and_a_slow_p99_reject_whatever_the_labels():
    reasons, ran, _ = verdict(result(errors=1, p99_ms=80.0, decisions=["a", "b", "a", None]), result(), False,
                              "multiclass")
    assert reasons == ["1 of 4 eval requests failed",
                       "the same decision as the default on 0.7500 of the images, below 0.9",
                       "p99 80.0 ms exceeds 55.0 ms (3.0 x the default's 10.0 ms + 25.0 ms)"]


def test_the_gate_reads_the_task_from_the_archive_it_serves(tmp_path):
    import json
    import zipfile

    def mar(path, handler):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"configFile": "model-config.yaml"}}))
            archive.writestr("model-config.yaml", f"handler: {json.dumps(handler)}\n")
        return path

    assert gate.config_of(mar(tmp_path / "a.mar", {**HANDLER, "task": "multilabel"})).task == "multilabel"
    assert gate.config_of(mar(tmp_path / "b.mar", HANDLER)).task == "multiclass"
