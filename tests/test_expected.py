"""Expected answers (marforge/archiving/expected.py): the comparison table, field paths, every kind of
mismatch and its text, the rollout gate's agreement, and the file of expected answers."""

import json
from pathlib import Path

import pytest

from marforge.archiving import expected
from marforge.archiving.expected import ABSENT, Comparison, Mismatch, agrees, field, mismatches
from marforge.errors import ArchiveError, DataError, RegistryError

WHERE, TOML = "[models.mine.compare]", Path("models.toml")
ANSWER = {"predictions": [{"label": "cat", "probability": 0.91, "took_ms": 3}, {"label": "dog", "probability": 0.09, "took_ms": 4}],
          "meta": {"host": "a", "model": "mine"}, "took_ms": 12}


def answer(**changes):
    """ANSWER (deep-copied) with top-level keys replaced; a value of ABSENT removes the key."""
    copy = json.loads(json.dumps(ANSWER))
    copy.update(changes)
    return {k: v for k, v in copy.items() if v is not ABSENT}


# -- the comparison table -----------------------------------------------------------------------------
def test_an_empty_table_gives_the_defaults_written_once():
    assert expected.KEYS == ("tolerance", "ignore", "decision")
    assert expected.DEFAULTS == {"tolerance": 0.0, "ignore": (), "decision": None}
    assert Comparison.from_table({}, WHERE, TOML) == Comparison(tolerance=0.0, ignore=(), decision=None)


def test_a_full_table_is_read_as_written():
    table = {"tolerance": 1e-5, "ignore": ["took_ms", "predictions.*.took_ms"], "decision": "predictions.0.label"}
    assert Comparison.from_table(table, WHERE, TOML) == Comparison(1e-5, ("took_ms", "predictions.*.took_ms"), "predictions.0.label")
    assert Comparison.from_table({"tolerance": 0}, WHERE, TOML).tolerance == 0.0


def test_an_unknown_key_is_refused_naming_the_file_table_and_key():
    with pytest.raises(RegistryError) as caught:
        Comparison.from_table({"tolerance": 0.1, "tolerence": 0.1}, WHERE, TOML)
    assert caught.value.message == ("models.toml: unknown key(s) tolerence in [models.mine.compare] "
                                    "(allowed: tolerance, ignore, decision)")
    assert caught.value.hint == "fix [models.mine.compare] in models.toml"


@pytest.mark.parametrize("key, value, wanted", [
    ("tolerance", -1e-5, "a number >= 0"), ("tolerance", "1e-5", "a number >= 0"), ("tolerance", True, "a number >= 0"),
    ("tolerance", float("nan"), "a number >= 0"), ("tolerance", float("inf"), "a number >= 0"),
    ("ignore", "took_ms", "a list of field paths"), ("ignore", ["meta..host"], "a list of field paths"),
    ("ignore", [3], "a list of field paths"),
    ("decision", 3, "a field path"), ("decision", "", "a field path"), ("decision", "predictions.*.label", "a field path")])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(key, value, wanted):
    with pytest.raises(RegistryError) as caught:
        Comparison.from_table({key: value}, WHERE, TOML)
    assert caught.value.message == f"models.toml: [models.mine.compare] {key} must be {wanted}, not {value!r}"


# -- field paths ---------------------------------------------------------------------------------------
def test_a_field_path_walks_objects_by_key_and_lists_by_position():
    assert field(ANSWER, "predictions.1.label") == "dog"
    assert field(ANSWER, "meta.host") == "a"
    assert field(ANSWER, "predictions") is ANSWER["predictions"]
    assert field({"0": "key, not position"}, "0") == "key, not position"


@pytest.mark.parametrize("path, message", [
    ("label", "the answer has no field label: (the answer) has no key 'label' (keys: predictions, meta, took_ms)"),
    ("predictions.2.label", "the answer has no field predictions.2.label: predictions is a list of 2 item(s), it has no item '2'"),
    ("predictions.first", "the answer has no field predictions.first: predictions is a list of 2 item(s), it has no item 'first'"),
    ("took_ms.value", "the answer has no field took_ms.value: took_ms is a number 12, not an object or a list")])
def test_an_absent_field_says_which_segment_is_missing(path, message):
    with pytest.raises(DataError) as caught:
        field(ANSWER, path)
    assert caught.value.message == message
    assert caught.value.hint == "check the comparison's field paths against the handler's answer"


# -- mismatches ----------------------------------------------------------------------------------------
def test_equal_answers_have_no_mismatches():
    assert mismatches(ANSWER, answer(), Comparison(), "a.png") == []


def test_a_number_outside_the_tolerance_reads_as_in_the_example():
    got = answer(predictions=[{**ANSWER["predictions"][0], "probability": 0.9103}, ANSWER["predictions"][1]])
    [m] = mismatches(ANSWER, got, Comparison(tolerance=1e-5), "pkg-0003.txt")
    assert m == Mismatch("pkg-0003.txt", "predictions.0.probability", 0.91, 0.9103, "differs by 3.0e-04 > tolerance 1.0e-05")
    assert str(m) == ("sample pkg-0003.txt: field predictions.0.probability: expected 0.91, got 0.9103 "
                      "(differs by 3.0e-04 > tolerance 1.0e-05)")


def test_the_tolerance_boundary_passes_and_just_beyond_it_fails():
    step = 2.0 ** -10  # exact in binary, so the gap is exactly the tolerance
    within = Comparison(tolerance=step)
    assert mismatches({"p": 0.5}, {"p": 0.5 + step}, within, "s") == []
    assert mismatches({"p": 0.5}, {"p": 0.5 - step}, within, "s") == []
    assert [m.why for m in mismatches({"p": 0.5}, {"p": 0.5 + 2 * step}, within, "s")] == ["differs by 2.0e-03 > tolerance 9.8e-04"]
    assert [m.why for m in mismatches({"n": 10}, {"n": 12}, Comparison(tolerance=2), "s")] == []
    assert [m.why for m in mismatches({"n": 10}, {"n": 12.5}, Comparison(tolerance=2), "s")] == [
        "differs by 2.5e+00 > tolerance 2.0e+00"]


def test_a_tolerance_of_zero_is_exact_but_an_int_equals_its_float():
    assert mismatches({"n": 1}, {"n": 1.0}, Comparison(), "s") == []
    assert [str(m) for m in mismatches({"n": 3}, {"n": 4}, Comparison(), "s")] == [
        "sample s: field n: expected 3, got 4 (differs by 1.0e+00 > tolerance 0.0e+00)"]


def test_nan_equals_only_nan_and_infinity_only_itself():
    nan, inf = float("nan"), float("inf")
    assert mismatches([nan, inf], [nan, inf], Comparison(tolerance=1.0), "s") == []
    assert [m.field for m in mismatches([nan, inf], [0.0, 1e300], Comparison(tolerance=1.0), "s")] == ["0", "1"]


def test_a_missing_and_an_unexpected_key_are_each_a_mismatch():
    got = answer(meta={"model": "mine", "region": "eu"})
    assert [str(m) for m in mismatches(ANSWER, got, Comparison(), "a.png")] == [
        'sample a.png: field meta.host: expected "a", got nothing (missing)',
        'sample a.png: field meta.region: expected nothing, got "eu" (unexpected)']
    assert [(m.expected, m.got) for m in mismatches(ANSWER, got, Comparison(), "a.png")] == [("a", ABSENT), (ABSENT, "eu")]


def test_lists_of_another_length_are_one_mismatch_at_the_list():
    [m] = mismatches({"p": [1, 2, 3]}, {"p": [1, 2, 3, 4, 5]}, Comparison(), "s")
    assert str(m) == "sample s: field p: expected [1, 2, 3], got [1, 2, 3, 4, 5] (list length 3 != 5)"


def test_everything_but_numbers_is_compared_exactly_type_included():
    cases = [("cat", "dog", '"cat"', '"dog"', "differs"), (True, False, "true", "false", "differs"),
             (True, 1, "true", "1", "a number instead of a boolean"), (1, True, "1", "true", "a boolean instead of a number"),
             ("1", 1, '"1"', "1", "a number instead of a string"), (None, 0, "null", "0", "a number instead of null"),
             ({"a": 1}, [1], '{"a": 1}', "[1]", "a list instead of an object")]
    for want, got, shown_want, shown_got, why in cases:
        assert [str(m) for m in mismatches({"v": want}, {"v": got}, Comparison(tolerance=10), "s")] == [
            f"sample s: field v: expected {shown_want}, got {shown_got} ({why})"], (want, got)


def test_a_whole_answer_of_another_kind_is_named_as_the_answer():
    assert [str(m) for m in mismatches({"label": "cat"}, "cat", Comparison(), "s")] == [
        'sample s: field (the answer): expected {"label": "cat"}, got "cat" (a string instead of an object)']


def test_a_long_value_is_shortened_in_the_text_but_kept_whole():
    [m] = mismatches(list(range(30)), list(range(31)), Comparison(), "s")
    assert str(m) == "sample s: field (the answer): expected [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16..., " \
                     "got [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16... (list length 30 != 31)"
    assert m.got == list(range(31))


def test_ignored_fields_are_skipped_present_missing_or_a_whole_subtree():
    got = answer(took_ms=99, meta={"host": "b", "model": "mine"})
    assert [m.field for m in mismatches(ANSWER, got, Comparison(), "s")] == ["meta.host", "took_ms"]
    assert mismatches(ANSWER, got, Comparison(ignore=("took_ms", "meta.host")), "s") == []
    assert mismatches(ANSWER, answer(took_ms=ABSENT, meta={"model": "mine"}), Comparison(ignore=("took_ms", "meta.host")), "s") == []
    assert mismatches(ANSWER, answer(meta="gone"), Comparison(ignore=("meta",)), "s") == []


def test_a_star_ignores_a_field_in_every_list_item_and_a_position_only_that_item():
    got = answer(predictions=[{**p, "took_ms": 50} for p in ANSWER["predictions"]])
    assert [m.field for m in mismatches(ANSWER, got, Comparison(), "s")] == ["predictions.0.took_ms", "predictions.1.took_ms"]
    assert mismatches(ANSWER, got, Comparison(ignore=("predictions.*.took_ms",)), "s") == []
    assert [m.field for m in mismatches(ANSWER, got, Comparison(ignore=("predictions.0.took_ms",)), "s")] == ["predictions.1.took_ms"]
    assert [m.field for m in mismatches(ANSWER, got, Comparison(ignore=("*.took_ms",)), "s")] == [
        "predictions.0.took_ms", "predictions.1.took_ms"]  # a star stands for one segment, not several


# -- the rollout gate's agreement ------------------------------------------------------------------------
def test_answers_agree_on_the_decision_alone_when_one_is_named():
    by_label = Comparison(decision="predictions.0.label")
    other_numbers = answer(took_ms=1, predictions=[{"label": "cat", "probability": 0.6, "took_ms": 1}])
    assert agrees(ANSWER, other_numbers, by_label) is True
    assert agrees(ANSWER, answer(predictions=[{"label": "dog", "probability": 0.91, "took_ms": 3}]), by_label) is False
    with pytest.raises(DataError, match=r"^the answer has no field predictions\.0\.label: predictions is a list of 0 item"):
        agrees(ANSWER, answer(predictions=[]), by_label)


def test_without_a_decision_answers_agree_when_nothing_compared_differs():
    got = answer(took_ms=13)
    assert agrees(ANSWER, got, Comparison()) is False
    assert agrees(ANSWER, got, Comparison(tolerance=1)) is True
    assert agrees(ANSWER, got, Comparison(ignore=("took_ms",))) is True


# -- the file of expected answers ------------------------------------------------------------------------
def test_written_answers_read_back_and_the_file_is_sorted_and_indented(tmp_path):
    samples = tmp_path / "samples" / "mine"
    answers = {"b.png": {"z": 1, "a": [0.5]}, "a.png": {"label": "cat"}}
    expected.write(samples, "2.0", answers)
    assert expected.expected_file(samples, "2.0") == samples / "expected-2.0.json"
    assert (samples / "expected-2.0.json").read_text() == (
        '{\n  "a.png": {\n    "label": "cat"\n  },\n  "b.png": {\n    "a": [\n      0.5\n    ],\n    "z": 1\n  }\n}\n')
    assert expected.read(samples, "2.0", ["b.png", "a.png"]) == answers
    assert list(expected.read(samples, "2.0", ["b.png"])) == ["b.png"]  # only the samples asked for, in their order
    assert [p.name for p in samples.iterdir()] == ["expected-2.0.json"]  # no partial file left behind


def test_a_missing_file_names_the_command_that_records_it(tmp_path):
    samples = tmp_path / "mine"
    with pytest.raises(DataError) as caught:
        expected.read(samples, "2.0", ["a.png"])
    assert caught.value.message == f"{samples}/expected-2.0.json: no expected answers for version 2.0"
    assert caught.value.hint == "record them: python -m marforge expect mine 2.0"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
    ('["a.png"]', "must map each sample file name to its expected answer")])
def test_a_file_that_is_not_a_json_object_is_refused(tmp_path, text, message):
    (tmp_path / "expected-1.0.json").write_text(text)
    with pytest.raises(DataError) as caught:
        expected.read(tmp_path, "1.0", ["a.png"])
    assert caught.value.message == f"{tmp_path}/expected-1.0.json: {message}"
    assert caught.value.hint == f"fix {tmp_path}/expected-1.0.json, or re-record it: python -m marforge expect {tmp_path.name} 1.0"


def test_samples_without_an_expected_answer_are_named(tmp_path):
    expected.write(tmp_path / "mine", "1.0", {"a.png": 1})
    with pytest.raises(DataError) as caught:
        expected.read(tmp_path / "mine", "1.0", ["a.png", "b.png", "c.png"])
    assert caught.value.message == f"{tmp_path}/mine/expected-1.0.json: no expected answer for 2 sample(s): b.png, c.png"
    assert caught.value.hint == "record them: python -m marforge expect mine 1.0"


# -- check ----------------------------------------------------------------------------------------------------
def test_check_passes_answers_that_match():
    expected.check({"a.png": ANSWER}, {"a.png": answer(took_ms=13)}, Comparison(ignore=("took_ms",)))


def test_check_lists_five_mismatches_across_samples_and_counts_the_rest(tmp_path):
    want = {"a.png": {"p": [0.1, 0.2, 0.3, 0.4]}, "b.png": {"p": [0.5, 0.6, 0.7]}, "c.png": {"p": [1.0]}}
    got = {"a.png": {"p": [0.9, 0.9, 0.9, 0.9]}, "b.png": {"p": [0.5, 0.9, 0.0]}, "c.png": {"p": [1.0]}}
    source = expected.expected_file(tmp_path / "mine", "2.0")
    with pytest.raises(ArchiveError) as caught:
        expected.check(want, got, Comparison(tolerance=0.25), source=source)
    assert caught.value.message == (
        f"6 mismatch(es) in 2 sample(s) with the expected answers in {source}:\n"
        "  sample a.png: field p.0: expected 0.1, got 0.9 (differs by 8.0e-01 > tolerance 2.5e-01)\n"
        "  sample a.png: field p.1: expected 0.2, got 0.9 (differs by 7.0e-01 > tolerance 2.5e-01)\n"
        "  sample a.png: field p.2: expected 0.3, got 0.9 (differs by 6.0e-01 > tolerance 2.5e-01)\n"
        "  sample a.png: field p.3: expected 0.4, got 0.9 (differs by 5.0e-01 > tolerance 2.5e-01)\n"
        "  sample b.png: field p.1: expected 0.6, got 0.9 (differs by 3.0e-01 > tolerance 2.5e-01)\n"
        "  ... and 1 more")
    assert caught.value.hint == ("fix the handler or the model; if the change is intended, re-record the expected answers: "
                                 "python -m marforge expect mine 2.0")


def test_check_names_a_sample_answered_on_one_side_only():
    with pytest.raises(ArchiveError) as caught:
        expected.check({"a.png": 1, "b.png": 2}, {"a.png": 1, "c.png": 3}, Comparison())
    assert caught.value.message == ("2 mismatch(es) in 2 sample(s) with the expected answers:\n"
                                    "  sample b.png: field (the answer): expected 2, got nothing (missing)\n"
                                    "  sample c.png: field (the answer): expected nothing, got 3 (unexpected)")
    assert caught.value.hint.endswith("re-record the expected answers: python -m marforge expect <name> <version>")
