"""Train the own-handler example (debsections): Debian package descriptions -> their section, with provenance.

The corpus is this machine's apt lists (marforge/train/debian_text.py), split by a hash of each
package name. The text becomes the model's input through the user's own handler file (its
`tokenize` and `encode`, loaded by path as plain code), so that training and serving cannot differ.
The vocabulary is the train split's VOCAB_SIZE most frequent tokens (words, with `ngrams = 2` also
word bigrams; ties by the token), written by the handler's `vocabulary_json`. Training is seeded,
on one thread with deterministic algorithms (both as they were afterwards): Adam on the NLL of the model's log-probabilities.

    python -m marforge train debsections 1.0   # weights/debsections-1.0.pt, .vocab.json and .json

It also writes samples/<name>/ (SAMPLE_COUNT held-out descriptions of different sections) and
eval/<name>/ (the first EVAL_COUNT held-out descriptions in hash order), `.txt` files with labels.json.
A version's recipe is its train table in models.toml with `dataset = "debian-descriptions"`:
epochs, batch_size, lr, seed, ngrams, vocab_size and min_accuracy (the held-out floor).
"""

import json
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch.nn import functional as F

from marforge import files, labelled
from marforge.archiving import weights
from marforge.errors import MarforgeError
from marforge.project import Project
from marforge.train import debian_text, recipe

DATASET_NAME = debian_text.DATASET_NAME
VOCAB_SUFFIX = ".vocab.json"  # weights/<key>.vocab.json: the version's extra file
SAMPLE_COUNT = 6
EVAL_COUNT = 300
TEXT_SUFFIX = ".txt"


def handler_module(handler_file: str | Path) -> ModuleType:
    """The user's handler file as a plain module (its tokenizer, encoder and vocabulary functions)."""
    return weights.import_file(handler_file, f"marforge_user_handler_{Path(handler_file).stem}")


def build_vocabulary(handler: ModuleType, texts: list[str], size: int, ngrams: int) -> Any:
    """The handler's vocabulary of the `size` most frequent tokens of `texts` (ties by the token)."""
    counts = Counter(token for text in texts for token in handler.tokenize(text, ngrams))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return handler.make_vocabulary([token for token, _ in ranked], list(debian_text.SECTIONS), ngrams)


def encoded(handler: ModuleType, vocabulary: Any, records: list[debian_text.Record]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(each record's token ids, its section index)."""
    ids, offsets = handler.encode([r.text for r in records], vocabulary)
    ends = [*offsets.tolist()[1:], len(ids)]
    docs = [ids[start:end] for start, end in zip(offsets.tolist(), ends)]
    return docs, torch.tensor([debian_text.SECTIONS.index(r.section) for r in records])


def bag(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's (ids, offsets) input for `docs`."""
    lengths = torch.tensor([0, *[len(d) for d in docs[:-1]]], dtype=torch.long)
    return torch.cat(docs) if docs else torch.zeros(0, dtype=torch.long), lengths.cumsum(0)


@torch.no_grad()
def score(model: torch.nn.Module, docs: list[torch.Tensor], labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean NLL) of `model` on encoded docs, in eval mode."""
    model.eval()
    logp = model(*bag(docs))
    return (logp.argmax(1) == labels).float().mean().item(), F.nll_loss(logp, labels).item()


def fit(model: torch.nn.Module, docs: list[torch.Tensor], labels: torch.Tensor, table: dict, log: Any) -> None:
    """Train by the recipe `table` (epochs, batch_size, lr, seed): Adam, a seeded order each epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=table["lr"])
    generator = torch.Generator().manual_seed(table["seed"])
    started = time.perf_counter()
    for epoch in range(1, table["epochs"] + 1):
        model.train()
        order = torch.randperm(len(docs), generator=generator).tolist()
        total = 0.0
        for i in range(0, len(order), table["batch_size"]):
            idx = order[i : i + table["batch_size"]]
            optimizer.zero_grad()
            loss = F.nll_loss(model(*bag([docs[j] for j in idx])), labels[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch}/{table['epochs']}: train loss {total / len(order):.4f}  {time.perf_counter() - started:.0f}s")


def write_texts(folder: Path, records: list[debian_text.Record]) -> dict[str, str]:
    """`<package>.txt` (the description as UTF-8) per record and labels.json; replaces old .txt files."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*" + TEXT_SUFFIX):
        old.unlink()
    mapping = {}
    for r in records:
        (folder / f"{r.package}{TEXT_SUFFIX}").write_text(r.text + "\n", encoding="utf-8")
        mapping[f"{r.package}{TEXT_SUFFIX}"] = r.section
    labelled.write(folder, mapping)
    return mapping


def samples_of(held_out: list[debian_text.Record]) -> list[debian_text.Record]:
    """The first SAMPLE_COUNT held-out records of different sections."""
    chosen: dict[str, debian_text.Record] = {}
    for r in held_out:
        if len(chosen) < SAMPLE_COUNT and r.section not in chosen:
            chosen[r.section] = r
    return list(chosen.values())


def _check_fits(model: torch.nn.Module, vocab_size: int, model_def: Path) -> None:
    probe = model(torch.tensor([vocab_size - 1]), torch.tensor([0]))
    if probe.shape[1] != len(debian_text.SECTIONS):
        raise MarforgeError(f"{model_def}: the model has {probe.shape[1]} outputs, the corpus "
                            f"{len(debian_text.SECTIONS)} sections", f"set its class count to {len(debian_text.SECTIONS)}")


def train(project: Project, name: str, version: str, table: dict, *, model_def: Path, handler_file: Path,
          log: Any = print) -> dict:
    """Train `name` `version` by its train `table`; writes the project's weights/<key>.pt, .vocab.json
    and .json, samples/<name>/ and eval/<name>/ and returns the metadata (model_def and handler_file:
    absolute, or relative to the project's root). Raises past the writes when the held-out accuracy
    is below the table's min_accuracy."""
    key = f"{name}-{version}"
    model_def, handler_file = project.root / model_def, project.root / handler_file
    handler = handler_module(handler_file)
    corpus = debian_text.load()
    train_records, held_out = corpus.split()
    vocabulary = build_vocabulary(handler, [r.text for r in train_records], table["vocab_size"], table["ngrams"])
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    try:
        recipe.seed_everything(table["seed"])
        model_class = weights.model_class(model_def)
        model = model_class()
        _check_fits(model, len(vocabulary.tokens), model_def)
        docs, labels = encoded(handler, vocabulary, train_records)
        log(f"{key}: {model_class.__name__}, {len(docs)} train / {len(held_out)} held-out descriptions, "
            f"{len(vocabulary.tokens)} tokens (ngrams {vocabulary.ngrams})")
        started = time.perf_counter()
        fit(model, docs, labels, table, lambda line: log(f"{key} {line}"))
        seconds = time.perf_counter() - started
        test_docs, test_labels = encoded(handler, vocabulary, held_out)
        accuracy, loss = score(model, test_docs, test_labels)
        eval_accuracy, _ = score(model, test_docs[:EVAL_COUNT], test_labels[:EVAL_COUNT])
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    weights_file, vocab_file = project.weights_dir / f"{key}.pt", project.weights_dir / f"{key}{VOCAB_SUFFIX}"
    weights_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights_file)
    vocab_file.write_text(handler.vocabulary_json(vocabulary), encoding="utf-8")
    write_texts(project.samples_dir / name, samples_of(held_out))
    write_texts(project.eval_root / name, held_out[:EVAL_COUNT])
    metadata = {
        "name": name, "version": version, "task": "custom",
        "model_def": project.relative(model_def), "model_class": model_class.__name__, "handler_file": project.relative(handler_file),
        "sha256": files.sha256(weights_file), "file_size": weights_file.stat().st_size,
        "vocab": {"file": project.relative(vocab_file), "sha256": files.sha256(vocab_file),
                  "tokens": len(vocabulary.tokens), "ngrams": vocabulary.ngrams},
        "dataset": {"name": DATASET_NAME, **corpus.provenance, "train_size": len(docs), "test_size": len(held_out)},
        "labels": list(debian_text.SECTIONS),
        "metrics": {"test_accuracy": round(accuracy, 6), "test_count": len(held_out), "test_loss": round(loss, 6),
                    "eval_accuracy": round(eval_accuracy, 6), "eval_count": min(EVAL_COUNT, len(held_out))},
        "recipe": {**table, "optimizer": "adam", "threads": 1},
        "training_seconds": round(seconds, 1),
        "command": f"python -m marforge train {name} {version}",
        "torch_version": torch.__version__,
        "created": files.utc_now(),
    }
    weights_file.with_suffix(".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    log(f"{key}: held-out accuracy {accuracy:.4f} ({len(held_out)}), eval {eval_accuracy:.4f} -> {weights_file}")
    floor = table.get("min_accuracy")
    if floor is not None and accuracy < floor:
        raise MarforgeError(f"{key}: held-out accuracy {accuracy:.4f} is below its floor {floor}",
                            "change its train table in models.toml and train again")
    return metadata


def train_version(project: Project, mv: Any, log: Any = print) -> dict:
    """recipe.train's entry for a version whose train table names DATASET_NAME (its handler_file is the
    registry's own-handler key)."""
    return train(project, mv.name, mv.version, dict(mv.train), model_def=mv.model_def, handler_file=mv.handler_file, log=log)
