"""Reliability and security (issue 10): strict loading, untrusted files, bad data, numerical faults, crash safety."""

import os

import pytest
import torch
from conftest import tiny_config_kwargs
from safetensors.torch import load_file, save_file

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation


def saved_tiny_model(tmp_path) -> str:
    torch.manual_seed(0)
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))
    model.save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def edit_weights(model_dir: str, edit) -> None:
    path = os.path.join(model_dir, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path, metadata={"format": "pt"})


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda state: state.pop("depthforge.tokens.scale"), "depthforge.tokens.scale"),
        (lambda state: state.update({"depthforge.stray.weight": torch.zeros(2)}), "depthforge.stray.weight"),
        (lambda state: state.update({"depthforge.tokens.scale": torch.zeros(5)}), "depthforge.tokens.scale"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_from_pretrained_refuses_a_checkpoint_that_does_not_match(tmp_path, edit, named):
    from transformers import AutoModelForSemanticSegmentation

    model_dir = saved_tiny_model(tmp_path)
    edit_weights(model_dir, edit)
    for loader in (DepthForgeForSemanticSegmentation, AutoModelForSemanticSegmentation):
        with pytest.raises(RuntimeError, match=r"depthforge\.(tokens\.scale|stray\.weight)|mismatch") as raised:
            loader.from_pretrained(model_dir)
        assert named in str(raised.value) or "mismatch" in str(raised.value).lower()


def test_partial_load_on_request_reports_what_did_not_load(tmp_path):
    model_dir = saved_tiny_model(tmp_path)
    edit_weights(model_dir, lambda state: state.pop("depthforge.tokens.scale"))
    model, info = DepthForgeForSemanticSegmentation.from_pretrained(
        model_dir, allow_partial_load=True, output_loading_info=True
    )
    assert set(info["missing_keys"]) == {"depthforge.tokens.scale"}
    assert not any(p.requires_grad for p in model.depthforge.vfm.parameters())  # still re-frozen


def test_backbone_loads_from_a_full_checkpoint_without_complaint(tmp_path):
    from depthforge_hf import DepthForgeModel

    model_dir = saved_tiny_model(tmp_path)
    backbone = DepthForgeModel.from_pretrained(model_dir)
    full = DepthForgeForSemanticSegmentation.from_pretrained(model_dir)
    assert torch.equal(backbone.tokens.learnable_tokens_a, full.depthforge.tokens.learnable_tokens_a)


# ----------------------------------------------------------------------------------------------------------------------
# Untrusted files
# ----------------------------------------------------------------------------------------------------------------------


class _Payload:
    """Unpickling this would create a file: the proof that a pickle payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_pickle_payload_in_a_checkpoint_without_running_it(tmp_path):
    import pickle

    from test_training import run_config, tiny_model

    from depthforge_hf.training import COMPLETE_MARKER, file_checksums, train

    config = run_config(tmp_path, tiny_model(tmp_path), max_steps=2, save_every=1)
    train(config)
    checkpoint = tmp_path / "run" / "checkpoint-1"
    marker = tmp_path / "payload-ran"
    with open(checkpoint / "training_state.pt", "wb") as handle:
        pickle.dump({"optimizer": _Payload(str(marker))}, handle)
    # a consistent marker, so that it is the unpickling that is refused, not the checksum
    (checkpoint / COMPLETE_MARKER).write_text(__import__("json").dumps(file_checksums(str(checkpoint))))
    with pytest.raises(pickle.UnpicklingError):
        train(run_config(tmp_path, config.model, max_steps=4, resume=str(checkpoint)))
    assert not marker.exists()


def test_no_module_unpickles_with_weights_only_false():
    """Every `torch.load` call in the package passes `weights_only=True`, and nothing calls `pickle.load(s)`."""
    import ast
    import pathlib

    import depthforge_hf

    root = pathlib.Path(depthforge_hf.__file__).parent
    torch_loads = 0
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = getattr(node.func.value, "id", None)
            if owner == "torch" and node.func.attr == "load":
                torch_loads += 1
                flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
                assert flags.get("weights_only") is True, f"{path}:{node.lineno} torch.load without weights_only=True"
            assert not (owner == "pickle" and node.func.attr in ("load", "loads")), f"{path}:{node.lineno}"
    assert torch_loads >= 2  # the checker found the known call sites (checkpoint resume, official conversion)


# ----------------------------------------------------------------------------------------------------------------------
# Bad data
# ----------------------------------------------------------------------------------------------------------------------


def png_bytes(array) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder, split: str, shards: list[list[dict]]) -> str:
    """Parquet shards in the `prepare-data` layout, one list of rows per shard (an empty list = an empty shard)."""
    from depthforge_hf.data.shards import DATA_DIR, shard_file_name, write_rows_to_parquet

    os.makedirs(os.path.join(folder, DATA_DIR), exist_ok=True)
    for index, rows in enumerate(shards):
        path = os.path.join(folder, DATA_DIR, shard_file_name(split, index, len(shards)))
        if rows:
            write_rows_to_parquet(rows, path)
        else:  # an empty shard with the right schema
            import pyarrow.parquet as pq

            from depthforge_hf.data.shards import SEGMENTATION_FEATURES

            pq.write_table(SEGMENTATION_FEATURES.arrow_schema.empty_table(), path)
    return str(folder)


def row(name: str, image: bytes, label: bytes) -> dict:
    return {"image": {"bytes": image, "path": None}, "label": {"bytes": label, "path": None}, "domain": "test",
            "file_name": name}


def mixed_rows(num_good: int, seed: int = 0) -> list[dict]:
    import numpy as np

    generator = np.random.default_rng(seed)
    rows = []
    for index in range(num_good):
        image = generator.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        label = generator.integers(0, 19, (48, 64), dtype=np.uint8)
        rows.append(row(f"good_{index}.png", png_bytes(image), png_bytes(label)))
    image = png_bytes(generator.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    rows.append(row("corrupt.png", b"not an image at all", png_bytes(np.zeros((48, 64), np.uint8))))
    rows.append(row("truncated.png", image[: len(image) // 2], png_bytes(np.zeros((48, 64), np.uint8))))
    rows.append(row("wrong_size.png", image, png_bytes(np.zeros((40, 64), np.uint8))))
    out_of_range = np.full((48, 64), 3, np.uint8)
    out_of_range[:10] = 77  # not a class id and not 255
    rows.append(row("bad_values.png", image, png_bytes(out_of_range)))
    return rows


def test_training_skips_bad_samples_reports_them_and_reads_through_empty_shards(tmp_path):
    import json

    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    rows = mixed_rows(12)
    data = write_shards(tmp_path / "data", "train", [rows[:8], [], rows[8:]])
    config = run_config(tmp_path, tiny_model(tmp_path), train_data=data, max_steps=8, batch_size=2, save_every=0,
                        max_bad_fraction=0.5)
    summary = train(config)
    assert summary["step"] == 8
    health = summary["data_health"]
    reported = [json.loads(line) for line in open(health["report"])]
    by_name = {}
    for entry in reported:
        by_name.setdefault(entry["file_name"], set()).add(entry["action"])
    # 16 samples per epoch; 8 steps of 2 cover at least one full epoch, so every bad file is seen at least once
    assert {"corrupt.png", "truncated.png", "wrong_size.png"} <= {n for n, a in by_name.items() if a == {"skipped"}}
    assert by_name["bad_values.png"] == {"mapped to ignore"}
    assert not any(name.startswith("good_") for name in by_name)
    assert health["skipped"] >= 3 and health["bad"] == len(reported)


def test_training_stops_when_too_much_of_the_data_is_bad(tmp_path, monkeypatch):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import DataHealth, train

    monkeypatch.setattr(DataHealth, "min_samples", 8)  # judge early: the test data is small
    data = write_shards(tmp_path / "data", "train", [mixed_rows(4)])  # 4 of 8 samples are bad
    config = run_config(tmp_path, tiny_model(tmp_path), train_data=data, max_steps=20, save_every=0,
                        max_bad_fraction=0.2)
    with pytest.raises(RuntimeError, match=r"training samples are bad .*--max-bad-fraction 0.2.*bad_samples-0.jsonl"):
        train(config)


def test_evaluation_skips_and_counts_bad_samples(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    train_data = write_shards(tmp_path / "train", "train", [mixed_rows(6, seed=1)[:6]])
    eval_data = write_shards(tmp_path / "eval", "validation", [mixed_rows(3, seed=2)])
    config = run_config(tmp_path, tiny_model(tmp_path), train_data=train_data, eval_data=[f"target={eval_data}"],
                        max_steps=2, save_every=0)
    results = train(config)["evaluation"]["target"]
    assert results["skipped_samples"] == 3  # corrupt, truncated, wrong size
    assert results["samples_with_invalid_labels"] == 1


# ----------------------------------------------------------------------------------------------------------------------
# Numerical faults
# ----------------------------------------------------------------------------------------------------------------------


def poison_losses(monkeypatch, bad_calls: set[int]):
    """Make the training forward return a NaN loss on the given call numbers (0-based)."""
    original = DepthForgeForSemanticSegmentation.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if kwargs.get("labels") is not None:
            if calls["n"] in bad_calls:
                output.loss = output.loss * float("nan")
            calls["n"] += 1
        return output

    monkeypatch.setattr(DepthForgeForSemanticSegmentation, "forward", forward)


def test_a_non_finite_loss_skips_its_step_and_is_counted(tmp_path, monkeypatch):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    poison_losses(monkeypatch, {1, 3})
    summary = train(run_config(tmp_path, tiny_model(tmp_path), max_steps=4, save_every=0))
    assert summary["step"] == 4  # two batches were skipped, four steps were still made
    assert summary["data_health"]["nonfinite_steps"] == 2
    assert all(torch.isfinite(torch.tensor([h["loss"] for h in summary["history"]])))
    model = summary["model"]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_repeated_non_finite_losses_stop_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import list_checkpoints, train

    model_dir = tiny_model(tmp_path)
    poison_losses(monkeypatch, set(range(2, 100)))
    with pytest.raises(RuntimeError, match="3 consecutive non-finite losses .*--resume latest"):
        train(run_config(tmp_path, model_dir, max_steps=8, save_every=0, max_consecutive_nonfinite=3))
    checkpoints = list_checkpoints(str(tmp_path / "run"))
    assert [os.path.basename(c) for c in checkpoints] == ["checkpoint-2"]
    monkeypatch.undo()
    resumed = train(run_config(tmp_path, model_dir, max_steps=8, save_every=0, resume="latest"))
    assert resumed["step"] == 8


# ----------------------------------------------------------------------------------------------------------------------
# Crash safety: SIGTERM / SIGINT checkpoint and exit cleanly; SIGKILL at any moment leaves the last checkpoint intact
# ----------------------------------------------------------------------------------------------------------------------

CRASH_RUN_STEPS = 60


def train_command(model_dir: str, output_dir: str, *extra: str) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "depthforge_hf.cli", "train", "--model", model_dir, "--output-dir", output_dir,
        "--max-steps", str(CRASH_RUN_STEPS), "--batch-size", "2", "--crop-size", "64", "--learning-rate", "1e-3",
        "--save-every", "2", "--keep-last", "3", "--log-every", "5", "--synthetic-train-samples", "16",
        "--synthetic-eval-samples", "2", "--eval-every", "0", "--seed", "7", "--schedule", "poly",
        "--warmup-ratio", "0.1", "--report-to", "none", *extra,
    ]


def run_environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}


def start_and_signal(command: list[str], output_dir, signal_number: int, after_checkpoint: int, delay: float):
    """Start a training process, wait until `checkpoint-<after_checkpoint>` exists, wait `delay` s, send the signal."""
    import subprocess
    import time

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=run_environment())
    deadline = time.monotonic() + 300
    while not (output_dir / f"checkpoint-{after_checkpoint}").exists():
        assert process.poll() is None, process.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "training did not reach the checkpoint in time"
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal_number)
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def uninterrupted_run(tmp_path_factory):
    """The reference: the same run without interruption, in its own process."""
    import subprocess

    tmp_path = tmp_path_factory.mktemp("reference")
    model_dir = saved_tiny_model(tmp_path)
    finished = subprocess.run(train_command(model_dir, str(tmp_path / "run")), capture_output=True, text=True,
                              env=run_environment(), timeout=600)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    return model_dir, load_file(str(tmp_path / "run" / f"checkpoint-{CRASH_RUN_STEPS}" / "trainable.safetensors"))


def assert_same_weights(path, reference: dict) -> None:
    weights = load_file(str(path))
    assert weights.keys() == reference.keys()
    for key in reference:
        assert torch.equal(weights[key], reference[key]), key


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_write_a_checkpoint_and_exit_cleanly(tmp_path, uninterrupted_run, signal_name):
    import signal
    import subprocess

    from depthforge_hf.training import list_checkpoints, verify_checkpoint

    model_dir, reference = uninterrupted_run
    output_dir = tmp_path / "run"
    code, output = start_and_signal(train_command(model_dir, str(output_dir)), output_dir,
                                    getattr(signal, signal_name), after_checkpoint=4, delay=0.05)
    assert code == 0, output[-3000:]
    assert f"Stopped by {signal_name}" in output
    latest = list_checkpoints(str(output_dir))[-1]
    verify_checkpoint(latest)
    stopped_at = int(latest.rsplit("-", 1)[1])
    assert 4 <= stopped_at < CRASH_RUN_STEPS, stopped_at  # the final checkpoint is where it stopped, not a periodic one
    resumed = subprocess.run(train_command(model_dir, str(output_dir), "--resume", "latest"), capture_output=True,
                             text=True, env=run_environment(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert_same_weights(output_dir / f"checkpoint-{CRASH_RUN_STEPS}" / "trainable.safetensors", reference)


def test_sigkill_at_any_moment_leaves_the_last_checkpoint_intact_and_the_run_resumes(tmp_path, uninterrupted_run):
    import signal
    import subprocess

    from depthforge_hf.training import list_checkpoints, verify_checkpoint

    model_dir, reference = uninterrupted_run
    output_dir = tmp_path / "run"
    # killed twice, at different moments (during steps or checkpoint writes), resuming in between
    for attempt, (after, delay) in enumerate(((2, 0.0), (12, 0.013))):
        extra = ("--resume", "latest") if attempt else ()
        code, output = start_and_signal(train_command(model_dir, str(output_dir), *extra), output_dir,
                                        signal.SIGKILL, after_checkpoint=after, delay=delay)
        assert code == -signal.SIGKILL, output[-2000:]
        checkpoints = list_checkpoints(str(output_dir))
        assert checkpoints, "no complete checkpoint survived"
        verify_checkpoint(checkpoints[-1])  # complete and matching its checksums
    resumed = subprocess.run(train_command(model_dir, str(output_dir), "--resume", "latest"), capture_output=True,
                             text=True, env=run_environment(), timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert_same_weights(output_dir / f"checkpoint-{CRASH_RUN_STEPS}" / "trainable.safetensors", reference)


def test_a_damaged_checkpoint_is_detected_and_resume_falls_back_to_an_intact_one(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import TrainingConfig, resolve_resume, train, verify_checkpoint

    train(run_config(tmp_path, tiny_model(tmp_path), max_steps=4, save_every=2))
    damaged = tmp_path / "run" / "checkpoint-4" / "trainable.safetensors"
    data = bytearray(damaged.read_bytes())
    data[-1] ^= 0xFF  # one flipped byte in the weights
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged: \['trainable.safetensors'\]"):
        verify_checkpoint(str(tmp_path / "run" / "checkpoint-4"))
    chosen = resolve_resume(TrainingConfig(output_dir=str(tmp_path / "run"), resume="latest"))
    assert chosen == str(tmp_path / "run" / "checkpoint-2")


# ----------------------------------------------------------------------------------------------------------------------
# Disk full or unwritable output directory: refused before training where it can be detected; a full disk while
# writing a checkpoint leaves the previous one intact and the run resumes from it
# ----------------------------------------------------------------------------------------------------------------------


def folder_bytes(path) -> int:
    import pathlib

    return sum(item.stat().st_size for item in pathlib.Path(path).rglob("*") if item.is_file())


def test_an_output_dir_with_a_file_in_the_way_is_refused_before_training(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    (tmp_path / "taken").write_text("a file, not a folder")
    config = run_config(tmp_path, tiny_model(tmp_path), max_steps=1, output_dir=str(tmp_path / "taken" / "run"))
    with pytest.raises(NotADirectoryError, match=r"Output directory .*taken/run is not writable .*--output-dir"):
        train(config)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only (0o555) folders: run as a normal user")
def test_a_read_only_output_dir_is_refused_before_training(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    config = run_config(tmp_path, tiny_model(tmp_path), max_steps=1)
    os.makedirs(config.output_dir)
    os.chmod(config.output_dir, 0o555)
    try:
        with pytest.raises(PermissionError, match=r"Output directory .*run is not writable .*--output-dir"):
            train(config)
        assert os.listdir(config.output_dir) == []
    finally:
        os.chmod(config.output_dir, 0o755)


def test_a_run_that_does_not_fit_on_the_disk_is_refused_before_training(tmp_path, monkeypatch):
    import collections
    import shutil

    from test_training import run_config, tiny_model

    from depthforge_hf import training
    from depthforge_hf.training import disk_needs, list_checkpoints, train

    model_dir = tiny_model(tmp_path)
    # stop_after ends each run with a checkpoint, before the final evaluation and export (quicker)
    config = run_config(tmp_path, model_dir, max_steps=3, save_every=1, keep_last=1, stop_after=1)
    needed = sum(disk_needs(DepthForgeForSemanticSegmentation.from_pretrained(model_dir), config).values())
    usage, real_usage = collections.namedtuple("usage", "total used free"), shutil.disk_usage

    def disk_usage_with(free):
        return lambda path: usage(real_usage(path).total, real_usage(path).used, free)

    monkeypatch.setattr(training.shutil, "disk_usage", disk_usage_with(needed - 1))
    with pytest.raises(OSError, match=r"Not enough free disk space") as raised:
        train(config)
    message = str(raised.value)
    assert raised.value.errno == __import__("errno").ENOSPC
    assert f"({needed} bytes: checkpoints" in message and f"({needed - 1} bytes) are free" in message
    assert "--keep-last (now 1)" in message and "--no-check-disk-space" in message and "--output-dir" in message
    assert list_checkpoints(config.output_dir) == []  # refused before the first step
    monkeypatch.setattr(training.shutil, "disk_usage", disk_usage_with(needed))  # exactly enough
    assert train(config)["step"] == 1
    monkeypatch.setattr(training.shutil, "disk_usage", disk_usage_with(0))  # the check can be turned off
    unchecked = run_config(tmp_path / "unchecked", model_dir, max_steps=3, stop_after=1, check_disk_space=False)
    assert train(unchecked)["step"] == 1


def test_the_disk_estimate_covers_what_a_run_writes(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import disk_needs, train

    model_dir = tiny_model(tmp_path)
    config = run_config(tmp_path, model_dir, max_steps=4, save_every=2, keep_last=1)
    needs = disk_needs(DepthForgeForSemanticSegmentation.from_pretrained(model_dir), config)
    train(config)
    run = tmp_path / "run"
    # keep_last 1: checkpoint-4 is written while checkpoint-2 still exists, two at the peak
    assert needs["checkpoints"] >= 2 * folder_bytes(run / "checkpoint-4")
    assert needs["model export"] >= folder_bytes(run / "model") + folder_bytes(run / "adapter")
    assert sum(needs.values()) >= folder_bytes(run) + folder_bytes(run / "checkpoint-4")


FULL_DISK_RUN = dict(max_steps=6, save_every=2, keep_last=5)


@pytest.fixture(scope="module")
def checkpoint_4_without_a_full_disk(tmp_path_factory):
    """Trainable weights at step 4 of the run the full-disk tests interrupt, trained without interruption."""
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    tmp_path = tmp_path_factory.mktemp("reference")
    # stop_after: the run ends with a checkpoint at step 4, before the final evaluation and export (quicker)
    train(run_config(tmp_path, tiny_model(tmp_path), stop_after=4, **FULL_DISK_RUN))
    return load_file(str(tmp_path / "run" / "checkpoint-4" / "trainable.safetensors"))


def full_disk_writer(real_writer, path_argument: int, fail_on_call: int, error: Exception):
    """`real_writer`, except that its call number `fail_on_call` (1-based) leaves half of its file (positional argument
    `path_argument`) and raises `error`, as a write that runs out of disk space does."""
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        result = real_writer(*args, **kwargs)
        if calls["n"] == fail_on_call:
            path = args[path_argument]
            with open(path, "r+b") as handle:
                handle.truncate(os.path.getsize(path) // 2)
            raise error
        return result

    return writer


@pytest.mark.parametrize(
    "writer, path_argument, error",
    [
        ("save_file", 1, OSError(28, "No space left on device")),
        # what safetensors really raises on a full disk (seen on a full tmpfs)
        ("save_file", 1, __import__("safetensors").SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)")),
        ("write_bytes", 0, OSError(28, "No space left on device")),
    ],
    ids=["weights, OSError", "weights, safetensors' error", "optimizer state"],
)
def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_the_run_resumes(
    tmp_path, monkeypatch, capsys, checkpoint_4_without_a_full_disk, writer, path_argument, error
):
    from test_training import run_config, tiny_model

    from depthforge_hf import training
    from depthforge_hf.training import list_checkpoints, mount_point, train, verify_checkpoint

    model_dir = tiny_model(tmp_path)
    # the second call of the writer is checkpoint-4's: its trainable weights, or its optimizer state
    monkeypatch.setattr(training, writer, full_disk_writer(getattr(training, writer), path_argument, 2, error))
    config = run_config(tmp_path, model_dir, stop_after=4, **FULL_DISK_RUN)
    with pytest.raises(OSError) as raised:
        train(config)
    message = str(raised.value)
    assert "Could not write checkpoint-4 (the disk is full)" in message and raised.value.errno == 28
    assert f"on {mount_point(config.output_dir)}, the file system of {config.output_dir}" in message
    assert "checkpoint-2, is intact" in message and "--resume latest" in message
    run = tmp_path / "run"
    assert [os.path.basename(path) for path in list_checkpoints(str(run))] == ["checkpoint-2"]
    verify_checkpoint(str(run / "checkpoint-2"))
    assert not [name for name in os.listdir(run) if "checkpoint-4" in name]  # no half-written folder left behind

    monkeypatch.undo()
    capsys.readouterr()
    resumed = train(run_config(tmp_path, model_dir, stop_after=2, resume="latest", **FULL_DISK_RUN))
    assert f"resumed from {run / 'checkpoint-2'} at step 2" in capsys.readouterr().out
    assert resumed["step"] == 4
    verify_checkpoint(str(run / "checkpoint-4"))
    # the same weights as a run that never met a full disk
    assert_same_weights(run / "checkpoint-4" / "trainable.safetensors", checkpoint_4_without_a_full_disk)


# ----------------------------------------------------------------------------------------------------------------------
# Config validation
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule": "cosine"}, r"schedule must be one of \('onecycle', 'poly'\)"),
        ({"mixed_precision": "fp8"}, "mixed_precision must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"save_every": -1}, "save_every must be >= 0"),
        ({"warmup_ratio": 1.5}, "warmup_ratio must lie in"),
        ({"invalid_labels": "drop"}, "invalid_labels must be one of"),
    ],
)
def test_training_settings_are_validated_at_construction(overrides, message):
    from depthforge_hf.training import TrainingConfig

    with pytest.raises(ValueError, match=message):
        TrainingConfig(**overrides)


def test_a_crop_that_does_not_tile_into_patches_is_refused(tmp_path):
    from test_training import run_config, tiny_model

    from depthforge_hf.training import train

    with pytest.raises(ValueError, match=r"crop_size \(72\) must be a multiple of the model's patch size \(16\)"):
        train(run_config(tmp_path, tiny_model(tmp_path), crop_size=72))

# Model config validation (pyramid indices, token count, widths, patch size, ...) is tested in test_modeling.py
# (test_invalid_configs_raise_clear_errors, test_mismatched_vit_pair_is_refused).


# ----------------------------------------------------------------------------------------------------------------------
# Mixed precision: fp16 always comes with loss scaling
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU case: fp16 cannot be honoured there")
def test_fp16_without_a_gpu_is_refused_instead_of_silently_training_in_fp32(tmp_path):
    from accelerate.state import AcceleratorState

    from depthforge_hf.training import TrainingConfig, make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)  # earlier tests in this process set up fp32 state
    with pytest.raises(ValueError, match="fp16 needs a CUDA device .* Use --mixed-precision bf16 or no"):
        make_accelerator(TrainingConfig(output_dir=str(tmp_path), mixed_precision="fp16", report_to="none"))


@pytest.mark.gpu
def test_fp16_on_a_gpu_uses_loss_scaling(tmp_path):
    from accelerate.state import AcceleratorState

    from depthforge_hf.training import TrainingConfig, make_accelerator

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = make_accelerator(TrainingConfig(output_dir=str(tmp_path), mixed_precision="fp16", report_to="none"))
    assert isinstance(accelerator.scaler, torch.amp.GradScaler)
