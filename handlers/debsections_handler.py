"""A user's own TorchServe handler: which Debian section a package description belongs to (debsections).

Written as a TorchServe user writes one, on TorchServe's BaseHandler alone, and archived as it is
with its vocabulary file; it imports nothing of marforge. BaseHandler loads the model
(model_defs/debsections.py, log-probabilities over the sections); `initialize` then reads the
vocabulary: the file the `handler:` section of model-config.yaml names as `vocab_file`, else the one
`*.vocab.json` in the model dir. The vocabulary (`make_vocabulary`) holds the tokens (token i is
embedding row i), the section labels (label i is output i) and `ngrams` (1: words, 2: words and
word bigrams). Tokens are the lowercased text's words (WORD); unknown ones are dropped.

Request:  the body as raw UTF-8 text, or JSON {"text": "..."}; or KServe's v1 body, {"instances": [...]}
          with each instance a text or {"text": "..."} (all of them in the one forward pass).
Answer:   {"section": "python", "probability": 0.93, "top": [{"section": ..., "probability": ...}, x3]};
          for a v1 body {"predictions": [one such answer per instance, in order]}.
Error:    {"error": "...", "code": 400} with HTTP 400 for that request only (set_response_status);
          the other requests of the batch are answered as usual.

Named debsections_handler.py on purpose: not text_classifier.py (a handler that fails to import makes
TorchServe fall back to `ts.torch_handler.<same name>`, and it would serve its own handler instead),
and not debsections.py (an archive is flat, and that is the model file's name).
"""

import contextlib
import glob
import itertools
import json
import os
import re
from types import SimpleNamespace

import torch
from ts.torch_handler.base_handler import BaseHandler

WORD = re.compile(r"[a-z0-9][a-z0-9+#]*")  # c++ and c# stay words; node.js is "node" "js"
TOP = 3
VOCAB_SUFFIX = ".vocab.json"


def make_vocabulary(tokens: list[str], labels: list[str], ngrams: int = 1) -> SimpleNamespace:
    """The vocabulary: token i is embedding row i, label i is output i, ngrams 1 (words) or 2 (and bigrams).
    A namespace, not a class of this module: TorchServe wants exactly one class in a handler module."""
    return SimpleNamespace(tokens=list(tokens), labels=list(labels), ngrams=int(ngrams))


def token_index(vocabulary: SimpleNamespace) -> dict[str, int]:
    return {token: i for i, token in enumerate(vocabulary.tokens)}


def vocabulary_json(vocabulary: SimpleNamespace) -> str:
    return json.dumps({"ngrams": vocabulary.ngrams, "labels": vocabulary.labels, "tokens": vocabulary.tokens},
                      ensure_ascii=False) + "\n"


def read_vocabulary(path: str) -> SimpleNamespace:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if data.get("ngrams", 1) not in (1, 2) or not data.get("tokens") or not data.get("labels"):
        raise ValueError(f"{path}: a vocabulary needs tokens, labels and ngrams 1 or 2")
    return make_vocabulary(data["tokens"], data["labels"], data.get("ngrams", 1))


def tokenize(text: str, ngrams: int = 1) -> list[str]:
    """The lowercased text's words, then (ngrams 2) its word bigrams, "a b"."""
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)] if ngrams == 2 else words


def request_body(row: dict):
    """One request's body (TorchServe's dict for it: `data` or `body`), UTF-8 bytes decoded and a JSON object parsed."""
    body = row.get("data", row.get("body")) if isinstance(row, dict) else None
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"the body is not UTF-8 text (byte {exc.start})") from None
        if body.lstrip().startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):  # else it is text that starts with a brace
                body = json.loads(body)
    return body


def text_of(body, where: str = "") -> str:
    """The text a body (or one v1 instance, `where` naming it) holds; ValueError saying why when it holds none."""
    if isinstance(body, dict):
        body = body.get("text")
        if not isinstance(body, str):
            raise ValueError(f'{where}a JSON body needs a "text" string: {{"text": "..."}}')
    if not isinstance(body, str):
        raise ValueError(f'{where}the body must be UTF-8 text or JSON {{"text": "..."}}')
    if not body.strip():
        raise ValueError(f"{where}the text is empty")
    return body


def request_text(row: dict) -> str:
    """The text of one request that is not a v1 body; ValueError saying why when it has none."""
    return text_of(request_body(row))


def request_texts(row: dict) -> tuple[list[str], bool]:
    """(the texts of one request, whether it is KServe's v1 body {"instances": [...]}, answered in kind)."""
    body = request_body(row)
    if not (isinstance(body, dict) and "instances" in body):
        return [text_of(body)], False
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ValueError('"instances" must be a non-empty list of texts or {"text": "..."} objects')
    return [text_of(instance, f"instance {i}: ") for i, instance in enumerate(instances)], True


def encode(texts: list[str], vocabulary: SimpleNamespace, index: dict[str, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids of all texts, one after another; each text's offset into them): the model's input."""
    index = token_index(vocabulary) if index is None else index
    ids: list[int] = []
    offsets: list[int] = []
    for text in texts:
        offsets.append(len(ids))
        ids.extend(index[t] for t in tokenize(text, vocabulary.ngrams) if t in index)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def answer(log_probabilities: torch.Tensor, labels: list[str]) -> dict:
    """One text's answer from its row of log-probabilities."""
    probabilities = log_probabilities.exp()
    values, indexes = probabilities.topk(min(TOP, len(labels)))
    top = [{"section": labels[i], "probability": p} for p, i in zip(values.tolist(), indexes.tolist())]
    return {"section": top[0]["section"], "probability": top[0]["probability"], "top": top}


def vocabulary_path(model_dir: str, config: dict) -> str:
    """The vocabulary file: the handler config's `vocab_file`, else the one *.vocab.json in model_dir."""
    named = (config.get("handler") or {}).get("vocab_file")
    if named:
        return os.path.join(model_dir, os.path.basename(named))
    found = sorted(glob.glob(os.path.join(model_dir, "*" + VOCAB_SUFFIX)))
    if len(found) != 1:
        raise RuntimeError(f"{model_dir}: expected one *{VOCAB_SUFFIX} file, found {len(found)}; "
                           "name it in model-config.yaml as handler: {vocab_file: ...}")
    return found[0]


class DebSectionsHandler(BaseHandler):
    def initialize(self, context):
        super().initialize(context)
        config = getattr(context, "model_yaml_config", None) or {}
        self.vocabulary = read_vocabulary(vocabulary_path(context.system_properties["model_dir"], config))
        self.token_index = token_index(self.vocabulary)

    def preprocess(self, data):
        """(model input of the good requests' texts, [(request index, its first text, how many, v1?)] of those
        requests, {index: the ValueError saying why} of the others)."""
        texts: list[str] = []
        good, bad = [], {}
        for i, row in enumerate(data):
            try:
                mine, v1 = request_texts(row)
            except ValueError as exc:
                bad[i] = exc
                continue
            good.append((i, len(texts), len(mine), v1))
            texts.extend(mine)
        return encode(texts, self.vocabulary, self.token_index), good, bad

    def inference(self, data, *args, **kwargs):
        (ids, offsets), good, bad = data
        if not good:
            return None, good, bad
        with torch.inference_mode():
            output = self.model(ids.to(self.device), offsets.to(self.device))
        return output.float().cpu(), good, bad

    def postprocess(self, data):
        output, good, bad = data
        answers: list[dict] = [{}] * (len(good) + len(bad))
        for i, first, count, v1 in good:
            mine = [answer(output[row], self.vocabulary.labels) for row in range(first, first + count)]
            answers[i] = {"predictions": mine} if v1 else mine[0]
        for i, exc in bad.items():
            self.context.set_response_status(400, str(exc), i)
            answers[i] = {"error": str(exc), "code": 400}
        return answers
