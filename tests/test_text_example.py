"""The own-handler text example (debsections), no server: the corpus parser and split
(marforge/train/debian_text.py), the user's handler (handlers/debsections_handler.py, loaded by path
as plain code, as an archive holds it), the committed weights' recorded accuracy, and retraining."""

import importlib.util
import json
import shutil
import uuid

import pytest
import torch
from conftest import ROOT
from ts.context import Context, RequestProcessor
from ts.metrics.metrics_store import MetricsStore

from marforge import files, labelled, shipped
from marforge.archiving import weights
from marforge.errors import DataError
from marforge.project import Project
from marforge.train import debian_text, text_recipe

HANDLER_FILE = ROOT / "handlers" / "debsections_handler.py"
MODEL_DEF = ROOT / "model_defs" / "debsections.py"
VERSIONS = ("1.0", "2.0")

DUMP = """\
Package: python3-foo
Version: 1.0-1
Description: Python 3 library for foo
 Foo does bar.
 .
 It also does baz.
Section: python
Tag: role::shared-lib,
 devel::lang:python

Package: python3-foo
Version: 0.9-1
Description: an older stanza of the same package
Section: perl

Package: libbar-perl
Section: contrib/perl
Description: Perl module for bar

Package: somelib1
Section: libs
Description: a library in a section that is not chosen

Package: aardvark-game
Section: non-free/games
Description: Dig for ants
"""


def load_handler():
    spec = importlib.util.spec_from_file_location("debsections_handler", HANDLER_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


handler = load_handler()


def metadata(version):
    return json.loads((ROOT / "weights" / f"debsections-{version}.json").read_text())


# -- the corpus --------------------------------------------------------------------------------------
def test_parse_keeps_first_stanza_strips_area_joins_continuations_and_drops_other_sections():
    assert debian_text.parse(DUMP) == [
        debian_text.Record("aardvark-game", "games", "Dig for ants"),
        debian_text.Record("libbar-perl", "perl", "Perl module for bar"),
        debian_text.Record("python3-foo", "python", "Python 3 library for foo\nFoo does bar.\n\nIt also does baz."),
    ]


def test_split_is_deterministic_disjoint_and_independent_of_record_order():
    records = [debian_text.Record(f"pkg{i}", "python", f"text {i}") for i in range(1000)]
    train, held_out = debian_text.Corpus(records).split()
    again_train, again_held_out = debian_text.Corpus(records[::-1]).split()
    assert {r.package for r in train} == {r.package for r in again_train}
    assert [r.package for r in held_out] == [r.package for r in again_held_out]
    assert {r.package for r in train} & {r.package for r in held_out} == set()
    assert len(train) + len(held_out) == 1000
    assert len(held_out) == sum(debian_text.is_held_out(f"pkg{i}") for i in range(1000))
    assert 60 < len(held_out) < 140  # about HELD_OUT_PERCENT of them
    assert debian_text.is_held_out("libghc-socks-dev") is True and debian_text.is_held_out("python3-foo") is False


def test_records_hash_ignores_order():
    records = debian_text.parse(DUMP)
    assert debian_text.records_sha256(records) == debian_text.records_sha256(records[::-1])
    assert debian_text.records_sha256(records) != debian_text.records_sha256(records[:2])


def test_no_apt_cache_is_a_data_error_that_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no apt-cache on the path
    with pytest.raises(DataError, match="apt-cache is not installed") as caught:
        debian_text.load()
    assert "apt-get update" in caught.value.hint


# -- the user's handler --------------------------------------------------------------------------------
def test_handler_imports_nothing_of_marforge():
    source = HANDLER_FILE.read_text()
    assert "marforge" not in source.replace("imports nothing of marforge", "")
    assert "import contract" not in source and "from contract" not in source


def test_tokenizer_lowercases_words_and_adds_bigrams_when_asked():
    assert handler.tokenize("Python 3 bindings for C++, node.js!") == ["python", "3", "bindings", "for", "c++", "node", "js"]
    assert handler.tokenize("Rust Crate foo", ngrams=2) == ["rust", "crate", "foo", "rust crate", "crate foo"]
    assert handler.tokenize("...") == []


def test_request_text_accepts_raw_utf8_and_json_and_refuses_the_rest():
    assert handler.request_text({"body": "Bibliothèque Python".encode()}) == "Bibliothèque Python"
    assert handler.request_text({"data": bytearray(b'{"text": "a game"}')}) == "a game"
    assert handler.request_text({"body": {"text": "parsed by TorchServe"}}) == "parsed by TorchServe"
    assert handler.request_text({"body": b"{not json} but text"}) == "{not json} but text"
    bad = {b"\xff\xfe": "the body is not UTF-8 text (byte 0)", b"  \n": "the text is empty",
           b'{"txt": "x"}': 'a JSON body needs a "text" string: {"text": "..."}', b"": "the text is empty"}
    for body, message in bad.items():
        with pytest.raises(ValueError) as caught:
            handler.request_text({"body": body})
        assert str(caught.value) == message
    with pytest.raises(ValueError, match="must be UTF-8 text or JSON"):
        handler.request_text({"body": 42})


def test_request_texts_reads_kserve_v1_instances_and_names_the_bad_one():
    assert handler.request_texts({"body": b"a game"}) == (["a game"], False)
    v1 = {"instances": ["a game", {"text": "a Perl module"}]}
    assert handler.request_texts({"body": json.dumps(v1).encode()}) == (["a game", "a Perl module"], True)
    assert handler.request_texts({"body": v1}) == (["a game", "a Perl module"], True)  # parsed by TorchServe
    bad = {'{"instances": []}': '"instances" must be a non-empty list of texts or {"text": "..."} objects',
           '{"instances": "a game"}': '"instances" must be a non-empty list of texts or {"text": "..."} objects',
           '{"instances": ["a game", {"data": "x"}]}': 'instance 1: a JSON body needs a "text" string: {"text": "..."}',
           '{"instances": ["a game", " "]}': "instance 1: the text is empty",
           '{"instances": [7]}': 'instance 0: the body must be UTF-8 text or JSON {"text": "..."}'}
    for body, message in bad.items():
        with pytest.raises(ValueError) as caught:
            handler.request_texts({"body": body.encode()})
        assert str(caught.value) == message


def test_encode_drops_unknown_tokens_and_offsets_each_text(tmp_path):
    vocabulary = handler.make_vocabulary(["python", "library", "python library"], ["python", "perl"], ngrams=2)
    ids, offsets = handler.encode(["Python library", "unknown words", "library"], vocabulary)
    assert ids.tolist() == [0, 1, 2, 1] and offsets.tolist() == [0, 3, 3]
    (tmp_path / "v.vocab.json").write_text(handler.vocabulary_json(vocabulary))
    assert handler.read_vocabulary(str(tmp_path / "v.vocab.json")) == vocabulary


def staged_context(version, model_dir, batch):
    """A worker's Context for debsections `version`, its files laid out flat in model_dir as an archive's."""
    for source in (HANDLER_FILE, MODEL_DEF, ROOT / "weights" / f"debsections-{version}.pt",
                   ROOT / "weights" / f"debsections-{version}.vocab.json"):
        shutil.copy(source, model_dir)
    manifest = {"model": {"modelName": "debsections", "modelVersion": version, "handler": HANDLER_FILE.name,
                          "serializedFile": f"debsections-{version}.pt", "modelFile": MODEL_DEF.name}}
    context = Context("debsections", str(model_dir), manifest, batch, None, "test",
                      metrics=MetricsStore(uuid.uuid4(), "debsections"), model_yaml_config={})
    context.request_processor = [RequestProcessor({}) for _ in range(batch)]
    return context


def test_handler_answers_a_batch_and_a_bad_request_only_fails_itself(tmp_path):
    batch = [{"body": b"Python 3 module for parsing YAML"}, {"body": b"\xff"},
             {"body": {"text": "Perl module for XML"}}, {"body": b" "},
             {"body": json.dumps({"instances": ["Perl module for XML", {"text": "Python 3 module for parsing YAML"}]}).encode()},
             {"body": {"instances": ["fine", ""]}}]
    context = staged_context("2.0", tmp_path, len(batch))
    user = handler.DebSectionsHandler()
    with shipped.isolated(tmp_path):  # the model dir on sys.path, as in a worker
        user.initialize(context)
    answers = user.handle(batch, context)
    assert [a.get("section") for a in answers] == ["python", None, "perl", None, None, None]
    assert answers[1] == {"error": "the body is not UTF-8 text (byte 0)", "code": 400}
    assert answers[3] == {"error": "the text is empty", "code": 400}
    assert answers[4] == {"predictions": [answers[2], answers[0]]}  # v1: one answer per instance, in order
    assert answers[5] == {"error": "instance 1: the text is empty", "code": 400}
    assert [context.get_response_status(i) for i in range(6)] == [
        (200, None), (400, "the body is not UTF-8 text (byte 0)"), (200, None), (400, "the text is empty"),
        (200, None), (400, "instance 1: the text is empty")]
    vocabulary = handler.read_vocabulary(str(tmp_path / "debsections-2.0.vocab.json"))
    model = weights.build_model(MODEL_DEF, tmp_path / "debsections-2.0.pt")
    with torch.no_grad():
        texts = ["Python 3 module for parsing YAML", "Perl module for XML", "Perl module for XML",
                 "Python 3 module for parsing YAML"]  # the batch's good texts in its order, one forward pass
        expected = model(*handler.encode(texts, vocabulary))[0].exp()
    values, indexes = expected.topk(3)
    top = [{"section": vocabulary.labels[i], "probability": p} for p, i in zip(values.tolist(), indexes.tolist())]
    assert answers[0] == {"section": "python", "probability": values[0].item(), "top": top}
    json.dumps(answers)  # every answer is JSON-able


def test_handler_finds_the_vocabulary_named_in_its_config_or_the_only_one(tmp_path):
    (tmp_path / "a.vocab.json").write_text("{}")
    assert handler.vocabulary_path(str(tmp_path), {}) == str(tmp_path / "a.vocab.json")
    named = {"handler": {"vocab_file": "weights/b.vocab.json"}}  # the archive holds it by its base name
    assert handler.vocabulary_path(str(tmp_path), named) == str(tmp_path / "b.vocab.json")
    (tmp_path / "c.vocab.json").write_text("{}")
    with pytest.raises(RuntimeError, match="expected one \\*.vocab.json file, found 2"):
        handler.vocabulary_path(str(tmp_path), {})


# -- the committed weights -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_committed_weights_reproduce_their_recorded_eval_accuracy_through_the_handlers_code(version):
    recorded = metadata(version)
    pt, vocab_file = ROOT / "weights" / f"debsections-{version}.pt", ROOT / "weights" / f"debsections-{version}.vocab.json"
    assert files.sha256(pt) == recorded["sha256"] and files.sha256(vocab_file) == recorded["vocab"]["sha256"]
    assert pt.stat().st_size < 5_000_000
    vocabulary = handler.read_vocabulary(str(vocab_file))
    assert vocabulary.labels == recorded["labels"] == list(debian_text.SECTIONS)
    examples = labelled.read(ROOT / "eval" / "debsections", "debsections eval set")
    assert len(examples) == recorded["metrics"]["eval_count"] == text_recipe.EVAL_COUNT
    texts = [handler.request_text({"body": path.read_bytes()}) for path, _ in examples]
    model = weights.build_model(MODEL_DEF, pt)
    with torch.no_grad():
        predicted = model(*handler.encode(texts, vocabulary)).argmax(1).tolist()
    correct = sum(vocabulary.labels[p] == label for p, (_, label) in zip(predicted, examples))
    assert round(correct / len(examples), 6) == recorded["metrics"]["eval_accuracy"]


def test_version_two_is_better_on_the_held_out_split_and_floors_are_below_the_scores():
    one, two = metadata("1.0")["metrics"], metadata("2.0")["metrics"]
    assert two["test_accuracy"] > one["test_accuracy"]
    assert one["test_count"] == two["test_count"] == metadata("1.0")["dataset"]["test_size"]
    assert all(metadata(v)["recipe"]["min_accuracy"] <= metadata(v)["metrics"]["test_accuracy"] for v in VERSIONS)
    assert metadata("2.0")["command"] == "python -m marforge train debsections 2.0"
    assert metadata("2.0")["task"] == "custom"


def test_samples_are_held_out_descriptions_of_different_sections():
    samples = labelled.read(ROOT / "samples" / "debsections", "debsections samples")
    assert len(samples) == text_recipe.SAMPLE_COUNT == len({label for _, label in samples})
    assert all(debian_text.is_held_out(path.stem) for path, _ in samples)


def test_retraining_reproduces_the_committed_weights(tmp_path):
    """Version 1.0 retrained into a scratch project, on the same apt state, gives the same vocabulary and
    metrics, and the same weights up to float rounding: on a machine other than the one that trained
    them the float kernels may round otherwise (measured on one: 4.4e-6 apart at most)."""
    recorded = metadata("1.0")
    try:
        corpus = debian_text.load()
    except DataError as exc:
        pytest.skip(f"no corpus on this machine: {exc.message}")
    if corpus.provenance["sha256"] != recorded["dataset"]["sha256"]:
        pytest.skip(f"this machine's apt lists give another corpus (sha256 {corpus.provenance['sha256'][:12]}, "
                    f"the weights' {recorded['dataset']['sha256'][:12]}): retraining would not reproduce them")
    (tmp_path / "models.toml").write_text("")
    table = {k: v for k, v in recorded["recipe"].items() if k not in ("optimizer", "threads")}
    again = text_recipe.train(Project.at(tmp_path / "models.toml"), "debsections", "1.0", table,
                              model_def=MODEL_DEF, handler_file=HANDLER_FILE, log=lambda line: None)
    mine, theirs = torch.load(tmp_path / "weights" / "debsections-1.0.pt"), torch.load(ROOT / "weights" / "debsections-1.0.pt")
    assert mine.keys() == theirs.keys()
    assert all(torch.allclose(mine[k], theirs[k], rtol=0, atol=1e-4) for k in theirs), \
        {k: (mine[k] - theirs[k]).abs().max().item() for k in theirs}
    assert again["vocab"]["sha256"] == recorded["vocab"]["sha256"]
    assert again["metrics"] == recorded["metrics"]
    assert json.loads((tmp_path / "eval" / "debsections" / "labels.json").read_text()) == \
        json.loads((ROOT / "eval" / "debsections" / "labels.json").read_text())
