"""A revision's files: the weights sealed once with their digest, checked before evaluation, and the retention sweep
that keeps the served and previous revisions. No torch needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from gptops.pipeline import revisions


def weights(root: Path, text: str = "w") -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_text(text)
    (model / "config.json").write_text("{}")
    return model


def test_sealed_weights_report_their_digest_and_a_changed_file_is_caught(tmp_path: Path) -> None:
    model = weights(tmp_path / "a")
    assert revisions.sealed(model) is None  # not complete until sealed
    digest = revisions.seal(model)
    assert digest.startswith("sha256:") and revisions.sealed(model) == digest == revisions.verify(model)
    assert revisions.seal(weights(tmp_path / "b")) == digest  # the same files, the same digest
    (model / "model.safetensors").write_text("tampered")
    with pytest.raises(ValueError, match="changed since training"):
        revisions.verify(model)


def test_unsealed_weights_cannot_be_evaluated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gptops-weights.json"):
        revisions.verify(weights(tmp_path))


def test_the_sweep_keeps_the_current_served_and_previous_revisions_and_anything_else(tmp_path: Path) -> None:
    ftj = tmp_path / "ns" / "ftj"
    for key in ("aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc", "dddddddddd"):
        weights(ftj / key)
    (ftj / "model").mkdir()  # an older layout, or anything that is not a revision: never touched
    removed = revisions.sweep(ftj / "aaaaaaaaaa", retain=["bbbbbbbbbb", "cccccccccc"])
    assert removed == ["dddddddddd"]
    assert sorted(p.name for p in ftj.iterdir()) == ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc", "model"]
