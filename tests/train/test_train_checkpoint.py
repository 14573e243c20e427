import pytest
import torch

from random_ltd.train import checkpoint


def test_save_and_load_round_trip_without_leftovers(tmp_path):
    path = tmp_path / "arm" / checkpoint.FILENAME
    checkpoint.save_atomic(path, {"step": 3, "weights": torch.arange(4.0)})
    loaded = checkpoint.load(path)
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == [checkpoint.FILENAME]
    assert checkpoint.load(tmp_path / "none.pt") is None


def test_a_save_that_dies_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / checkpoint.FILENAME
    checkpoint.save_atomic(path, {"step": 1})

    def torn_save(value, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic(path, {"step": 2})
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1


def test_truncate_drops_lines_written_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    checkpoint.truncate(path, len('{"step": 1}\n'))
    assert path.read_text() == '{"step": 1}\n'
    checkpoint.truncate(path, 10_000)  # never grows
    assert path.read_text() == '{"step": 1}\n'
