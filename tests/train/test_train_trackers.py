"""``random-ltd train --report-to``: each tracker, offline, read back against metrics.jsonl and summary.json."""
from __future__ import annotations

import json
import struct
import sys

import pytest

from random_ltd.cli import main
from random_ltd.train.config import ConfigError, TrainConfig

ARMS = ("baseline", "random_ltd")


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, request):
    """One tiny two-arm run reported to all three trackers (W&B offline, MLflow in a local file store)."""
    for module in ("tensorboard", "wandb", "mlflow"):
        pytest.importorskip(module)
    root = tmp_path_factory.mktemp("tracked")
    cache = tmp_path_factory.getbasetemp() / "random-ltd-cache"
    cache.mkdir(exist_ok=True)
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.setenv("MLFLOW_TRACKING_URI", (root / "mlruns").as_uri())
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for an opt-in to the file store
    out = root / "run"
    code = main(["train", "--quick", "--steps", "3", "--eval-every", "3", "--seq-len", "32", "--out", str(out),
                 "--cache-dir", str(cache), "--no-progress", "--eval-batches", "1",
                 "--report-to", "tensorboard,wandb,mlflow"])
    assert code == 0
    steps = {arm: [json.loads(line) for line in (out / arm / "seed0" / "metrics.jsonl").read_text().splitlines()]
             for arm in ARMS}
    return out, steps, json.loads((out / "summary.json").read_text())


def expected(steps: dict, name: str) -> dict[str, list[tuple[int, float]]]:
    return {arm: [(r["step"], float(r[name])) for r in records if name in r] for arm, records in steps.items()}


def assert_series(read: dict, want: dict, rel: float) -> None:
    assert set(read) == set(want)
    for arm in want:
        assert [step for step, _ in read[arm]] == [step for step, _ in want[arm]], arm
        assert [value for _, value in read[arm]] == pytest.approx([value for _, value in want[arm]], rel=rel), arm


def test_tensorboard_event_files_hold_every_step_and_the_summary(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, steps, summary = tracked_run
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for name in ("train_loss", "kept", "layer_tokens", "lr", "val_loss"):
        read = {arm: [(e.step, e.value) for e in events.Scalars(f"{arm}/seed0/{name}")] for arm in ARMS}
        assert_series(read, expected(steps, name), rel=1e-6)
    saving = events.Scalars("summary/comparison/layer_tokens_saving")[0].value
    assert saving == pytest.approx(summary["comparison"]["layer_tokens_saving"], rel=1e-6) and saving > 0
    assert "| random_ltd |" in events.Tensors("summary/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_local_store_holds_every_step_and_the_summary(tracked_run):
    import mlflow

    out, steps, summary = tracked_run
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("random-ltd").experiment_id])
    for name in ("train_loss", "kept", "layer_tokens"):
        read = {arm: sorted((m.step, m.value)
                            for m in client.get_metric_history(run.info.run_id, f"{arm}/seed0/{name}"))
                for arm in ARMS}
        assert_series(read, expected(steps, name), rel=1e-12)
    assert run.data.metrics["summary/comparison/layer_tokens_saving"] == summary["comparison"]["layer_tokens_saving"]
    artifact = client.download_artifacts(run.info.run_id, "summary.json")
    assert json.loads(open(artifact).read())["arms"] == summary["arms"]


WANDB_BLOCK, WANDB_HEADER = 32768, 7  # a .wandb file: a 7-byte header, then LevelDB-log records in 32 KiB blocks


def wandb_records(raw: bytes):
    """The protobuf payloads of an offline run's ``.wandb`` file (checksums not checked)."""
    position, pending = WANDB_HEADER, b""
    while position + 7 <= len(raw):
        left = WANDB_BLOCK - position % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at the end of a block
            position += left
            continue
        data, position = raw[position + 7:position + 7 + length], position + 7 + length
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):  # a whole record, or the last piece of one
            yield pending


def test_wandb_offline_run_holds_every_step_and_the_summary(tracked_run):
    from wandb.proto import wandb_internal_pb2

    out, steps, summary = tracked_run
    (offline,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    history, final = [], {}
    for data in wandb_records(offline.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind == "summary":
            final.update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                          for item in record.summary.update})
    for name in ("train_loss", "kept", "layer_tokens"):
        read = {arm: [(row[f"{arm}/seed0/step"], row[f"{arm}/seed0/{name}"]) for row in history
                      if f"{arm}/seed0/{name}" in row] for arm in ARMS}
        assert_series(read, expected(steps, name), rel=1e-12)
    expected_saving = summary["comparison"]["layer_tokens_saving"]
    assert final["summary/comparison/layer_tokens_saving"] == pytest.approx(expected_saving)


def test_unknown_tracker_and_missing_package_are_one_line_errors_with_exit_code_2(monkeypatch, capsys, tmp_path):
    with pytest.raises(ConfigError, match="--report-to: unknown value 'neptune'"):
        TrainConfig(report_to=("neptune",))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it raises ImportError
    assert main(["train", "--quick", "--report-to", "wandb", "--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith("--report-to: wandb is not installed: pip install wandb") and "\n" not in error
    assert not (tmp_path / "never").exists()
