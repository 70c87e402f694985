"""Reading a version's weights metadata is cheap (JSON only); verifying the weights against it is
what archiving does, and only archiving (and the demo's are-they-there-already check)."""

import json
from types import SimpleNamespace

import pytest

from marforge.archiving import weights
from marforge.errors import WeightsError


def version(tmp_path, sha="0" * 64):
    (tmp_path / "m-1.0.json").write_text(json.dumps({"sha256": sha, "labels": ["a", "b"], "task": "multilabel"}))
    return SimpleNamespace(name="m", version="1.0", metadata=tmp_path / "m-1.0.json", weights=tmp_path / "m-1.0.pt",
                           exported=None)


def test_reading_metadata_neither_hashes_nor_loads_the_weights(tmp_path, monkeypatch):
    mv = version(tmp_path)
    (tmp_path / "m-1.0.pt").write_bytes(b"not a state_dict")
    monkeypatch.setattr(weights, "sha256", lambda path: pytest.fail("read_metadata hashed the weights"))
    monkeypatch.setattr(weights, "load_state_dict", lambda path: pytest.fail("read_metadata loaded the weights"))
    assert weights.read_metadata(mv)["task"] == "multilabel"
    (tmp_path / "m-1.0.pt").unlink()
    assert weights.read_metadata(mv)["labels"] == ["a", "b"]  # no weights file needed to read a field


def test_missing_metadata_names_the_file_and_the_command(tmp_path):
    mv = SimpleNamespace(name="m", version="1.0", metadata=tmp_path / "m-1.0.json", weights=tmp_path / "m-1.0.pt")
    for read in (weights.read_metadata, weights.verified_metadata):
        with pytest.raises(WeightsError) as caught:
            read(mv)
        assert caught.value.message == f"{mv.metadata}: weights metadata not found"
        assert caught.value.hint == "make weights (or python -m marforge train m 1.0)"


def test_verifying_refuses_missing_or_changed_weights(tmp_path):
    mv = version(tmp_path)
    with pytest.raises(WeightsError) as caught:
        weights.verified_metadata(mv)
    assert caught.value.message == f"{mv.weights}: weights file not found"
    (tmp_path / "m-1.0.pt").write_bytes(b"changed")
    with pytest.raises(WeightsError) as caught:
        weights.verified_metadata(mv)
    assert "does not match m-1.0.json" in caught.value.message and "changed or corrupted" in caught.value.message


def test_verifying_loads_the_state_dict_after_the_hash_matches(tmp_path):
    import torch

    from marforge.files import sha256

    torch.save({"w": torch.zeros(2)}, tmp_path / "m-1.0.pt")
    mv = version(tmp_path, sha=sha256(tmp_path / "m-1.0.pt"))
    assert weights.verified_metadata(mv)["labels"] == ["a", "b"]
    torch.save({"w": [1, 2]}, tmp_path / "m-1.0.pt")
    mv = version(tmp_path, sha=sha256(tmp_path / "m-1.0.pt"))
    with pytest.raises(WeightsError):
        weights.verified_metadata(mv)
