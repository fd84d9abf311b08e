"""Training loop tests (issue 6): official optimiser groups and schedule, atomic checkpoints, bitwise resume."""

import json
import os

import pytest
import torch
from conftest import tiny_config_kwargs
from safetensors.torch import load_file

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.training import (
    TrainingConfig,
    build_scheduler,
    list_checkpoints,
    parameter_groups,
    save_checkpoint,
    train,
)


def tiny_model(tmp_path) -> str:
    torch.manual_seed(0)
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))
    path = tmp_path / "tiny"
    model.save_pretrained(path)
    return str(path)


def test_parameter_groups_follow_the_official_no_decay_rules():
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))
    decay, no_decay = parameter_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"depthforge.tokens.learnable_tokens_a", "depthforge.tokens.learnable_tokens_b",
            "depthforge.tokens.scale", "transformer_decoder.level_embed.weight"} <= no_decay_names
    assert "pixel_decoder.input_projections.0.1.weight" in no_decay_names  # GroupNorm
    assert "transformer_decoder.decoder.layernorm.weight" in no_decay_names
    # official quirk: the pixel decoder's level embedding ("level_encoding") keeps weight decay
    assert "pixel_decoder.level_embed" in decay_names
    assert "depthforge.tokens.mlp_delta_f.weight" in decay_names
    assert not any(n.startswith("depthforge.vfm") for n in decay_names | no_decay_names)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_onecycle_schedule_matches_the_official_values():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    scheduler = build_scheduler(optimizer, TrainingConfig(max_steps=1000, learning_rate=1e-4, schedule="onecycle"))
    rates = []
    for _ in range(1000):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(1e-5)
    assert max(rates) == pytest.approx(1e-4) and rates.index(max(rates)) == 99  # pct 0.1: peak at 0.1 * total - 1
    assert rates[-1] == pytest.approx(1e-6, rel=1e-3)


def test_interrupted_checkpoint_write_leaves_previous_checkpoints_intact(tmp_path):
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.05), lr=1e-4)
    scheduler = build_scheduler(optimizer, TrainingConfig(max_steps=100))
    save_checkpoint(str(tmp_path), 2, model, optimizer, scheduler, {"epoch": 0, "batches_done": 2}, keep_last=2)
    # a crash while writing step 4 leaves only a staging folder without completion marker
    os.makedirs(tmp_path / ".tmp-checkpoint-4-123")
    (tmp_path / ".tmp-checkpoint-4-123" / "trainable.safetensors").write_bytes(b"partial")
    assert list_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-2")]
    for step in (4, 6):
        save_checkpoint(str(tmp_path), step, model, optimizer, scheduler, {"epoch": 0, "batches_done": step}, 2)
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path))] == ["checkpoint-4", "checkpoint-6"]


def run_config(tmp_path, model_dir, **overrides) -> TrainingConfig:
    values = dict(
        model=model_dir, output_dir=str(tmp_path / "run"), max_steps=6, batch_size=2, crop_size=64,
        learning_rate=1e-3, save_every=3, keep_last=5, log_every=1, synthetic_train_samples=16,
        synthetic_eval_samples=2, eval_every=0, seed=7, schedule="poly", warmup_ratio=0.34,
    )
    values.update(overrides)
    return TrainingConfig(**values)


def test_killed_and_resumed_run_reaches_the_same_weights_bitwise(tmp_path):
    model_dir = tiny_model(tmp_path)
    full = train(run_config(tmp_path / "full", model_dir))
    assert full["step"] == 6 and all(torch.isfinite(torch.tensor([h["loss"] for h in full["history"]])))
    # the same run, stopped after 3 steps (as a preempted job would) and resumed from its latest checkpoint
    stopped = train(run_config(tmp_path / "resumed", model_dir, stop_after=3))
    assert stopped["step"] == 3
    resumed = train(run_config(tmp_path / "resumed", model_dir, resume="latest"))
    assert resumed["step"] == 6
    a = load_file(str(tmp_path / "full" / "run" / "checkpoint-6" / "trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "run" / "checkpoint-6" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the saved model directory loads and is the trained model
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(full["model_dir"])
    assert torch.equal(loaded.depthforge.tokens.learnable_tokens_a, a["depthforge.tokens.learnable_tokens_a"])


def test_real_weights_path_trains_from_local_pretrained_parts(tmp_path):
    """The `--vfm/--depth` path (from_pretrained_backbones) on tiny DINOv2 / Depth Anything folders, offline."""
    from test_modeling import save_pretrained_parts

    save_pretrained_parts(tmp_path)
    config = run_config(
        tmp_path, "demo", vfm=str(tmp_path / "dinov2"), depth=str(tmp_path / "depth"), max_steps=2, save_every=0
    )
    summary = train(config)
    assert summary["step"] == 2
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(summary["model_dir"])
    assert loaded.config.vfm_config.patch_size == 16 and loaded.config.vfm_config.image_size == 64
    # the pretrained patch-14 ViT was converted, not replaced by random weights
    source = load_file(str(tmp_path / "dinov2" / "model.safetensors"))
    key = next(k for k in source if k.endswith("layer.0.norm1.weight"))
    assert torch.equal(loaded.depthforge.vfm.encoder.layer[0].norm1.weight, source[key])
    from transformers import pipeline

    segments = pipeline("image-segmentation", model=summary["model_dir"])(
        __import__("PIL.Image", fromlist=["Image"]).new("RGB", (80, 48))
    )
    assert segments and all(s["mask"].size == (80, 48) for s in segments)


def test_two_cpu_processes_train_on_different_data(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): disjoint data, finite losses, identical replicas, loadable model."""
    import socket
    import subprocess
    import sys

    model_dir = tiny_model(tmp_path)
    output_dir = tmp_path / "run"
    with socket.socket() as probe:  # a free port for the process group
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        os.path.join(os.path.dirname(__file__), "two_process_worker.py"), str(output_dir), model_dir,
    ]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    seen = [set((output_dir / f"seen-{rank}.txt").read_text().split()) for rank in (0, 1)]
    assert len(seen[0]) >= 6 and len(seen[1]) >= 6 and not (seen[0] & seen[1])
    losses = [[float(x) for x in (output_dir / f"losses-{rank}.txt").read_text().split()] for rank in (0, 1)]
    assert len(losses[0]) == 3 and all(torch.isfinite(torch.tensor(losses[0] + losses[1])))
    assert losses[0] == losses[1]  # the logged loss is the mean over processes
    assert (output_dir / "weights-0.txt").read_text() == (output_dir / "weights-1.txt").read_text()
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(output_dir / "model")
    assert loaded.config.num_labels == 19


def test_periodic_evaluation_keeps_the_best_step_and_logs_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the `tensorboard` package (dev extra)")
    config = run_config(tmp_path, tiny_model(tmp_path), eval_every=2, save_every=0, report_to="tensorboard")
    summary = train(config)
    best = summary["best"]
    scores = {}
    # every evaluation is in the TensorBoard event files, per domain and as the mean
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    event_dirs = {os.path.dirname(p) for p in (tmp_path / "run").rglob("events.out.tfevents.*")}
    assert event_dirs
    for directory in event_dirs:
        accumulator = EventAccumulator(str(directory))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag == "eval/mean_mIoU":
                scores.update({event.step: event.value for event in accumulator.Scalars(tag)})
            if tag == "train/loss":
                assert len(accumulator.Scalars(tag)) == 6
    assert sorted(scores) == [2, 4, 6]
    # the kept step is the best evaluation (ties keep the earlier one)
    best_step = max(sorted(scores), key=lambda step: (round(scores[step], 4), -step))
    assert best["step"] == best_step and best["score"] == pytest.approx(scores[best_step], abs=1e-4)
    kept = load_file(str(tmp_path / "run" / "best" / "trainable.safetensors"))
    if best_step != 6:  # an earlier step was better: it is exported as a model too, distinct from the final one
        loaded = DepthForgeForSemanticSegmentation.from_pretrained(summary["best_model_dir"])
        final = DepthForgeForSemanticSegmentation.from_pretrained(summary["model_dir"])
        assert torch.equal(loaded.depthforge.tokens.learnable_tokens_a, kept["depthforge.tokens.learnable_tokens_a"])
        assert not torch.equal(final.depthforge.tokens.learnable_tokens_a, kept["depthforge.tokens.learnable_tokens_a"])
    else:
        assert "best_model_dir" not in summary


def test_trackers_are_chosen_from_report_to():
    from depthforge_hf.training import resolve_trackers

    assert resolve_trackers("none") == []
    assert resolve_trackers("tensorboard, wandb") == ["tensorboard", "wandb"]
    import importlib.util

    installed = importlib.util.find_spec("tensorboard") is not None
    assert resolve_trackers("auto") == (["tensorboard"] if installed else [])


def test_real_recipes_start_from_the_papers_pretrained_pair_and_presets_pick_others(monkeypatch, tmp_path):
    """The official recipes never train random encoders: they load the paper's pair (a `presets.PRESETS` name) from
    the Hub; `--model <preset>` loads another pair. The download is replaced by a recorder here (offline)."""
    from depthforge_hf.training import RECIPES, build_model

    calls = []

    def fake_from_pretrained_backbones(cls, vfm, depth, **kwargs):
        calls.append((vfm, depth, kwargs))
        return DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs()))

    monkeypatch.setattr(DepthForgeForSemanticSegmentation, "from_pretrained_backbones",
                        classmethod(fake_from_pretrained_backbones))
    for recipe in ("gta2cityscapes", "cityscapes2acdc", "custom"):
        build_model(TrainingConfig(**RECIPES[recipe], output_dir=str(tmp_path)))
    assert [call[:2] for call in calls] == [("facebook/dinov2-large", "depth-anything/Depth-Anything-V2-Large-hf")] * 3
    assert calls[0][2] == {"image_size": 512}

    calls.clear()
    build_model(TrainingConfig(model="dinov2-small+da2-small", crop_size=256), num_labels=5)
    build_model(TrainingConfig(model="dinov2-large+da2-small"))
    assert calls == [
        ("facebook/dinov2-small", "depth-anything/Depth-Anything-V2-Small-hf", {"image_size": 256, "num_labels": 5}),
        # unequal sizes: the preset opts into the documented pairing extension
        ("facebook/dinov2-large", "depth-anything/Depth-Anything-V2-Small-hf",
         {"image_size": 512, "allow_encoder_size_mismatch": True}),
    ]


def test_encoders_of_unequal_size_train_only_with_the_extension_flag(tmp_path):
    from test_encoder_pairs import save_depth_model
    from test_modeling import save_pretrained_parts

    save_pretrained_parts(tmp_path)  # DINOv2 of width 32
    save_depth_model(tmp_path / "narrow-depth", hidden_size=16, num_hidden_layers=8)
    kwargs = dict(vfm=str(tmp_path / "dinov2"), depth=str(tmp_path / "narrow-depth"), max_steps=1, save_every=0,
                  synthetic_eval_samples=1)
    with pytest.raises(Exception, match="Set allow_encoder_size_mismatch=True"):
        train(run_config(tmp_path / "refused", "demo", **kwargs))
    summary = train(run_config(tmp_path / "extension", "demo", allow_encoder_size_mismatch=True, **kwargs))
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(summary["model_dir"])
    assert loaded.depthforge.depth_projection.weight.shape == (32, 16)
    assert loaded.depthforge.paired_depth_layers == [1, 3, 5, 7]


def test_push_to_hub_uploads_the_run_and_is_checked_before_training(monkeypatch, tmp_path):
    import huggingface_hub
    from huggingface_hub import ModelCard, constants
    from test_hub import FakeHfApi

    model_dir = tiny_model(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_fake")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        train(run_config(tmp_path / "offline", model_dir, push_to_hub="someone/depthforge-run"))
    assert not os.path.exists(tmp_path / "offline" / "run" / "checkpoint-3")  # refused before any step
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(Exception, match="[Rr]epo"):
        train(run_config(tmp_path / "bad-id", model_dir, push_to_hub="not a repo id"))

    api = FakeHfApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    config = run_config(tmp_path, model_dir, max_steps=2, save_every=0, synthetic_eval_samples=1,
                        push_to_hub="someone/depthforge-run", hub_private=True)
    summary = train(config)
    assert [call[0] for call in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == "someone/depthforge-run" and api.calls[0][2]["private"] is True
    uploaded = tmp_path / "run" / "hub-repo"
    from depthforge_hf.hub import folder_fingerprint

    assert api.uploaded == folder_fingerprint(uploaded) and "model.safetensors" in api.uploaded
    card = ModelCard.load(uploaded / "README.md")
    evaluation = json.loads((tmp_path / "run" / "evaluation.json").read_text())["evaluation"]
    scores = {result.dataset_name: result.metric_value for result in card.data.eval_results
              if result.metric_name == "mIoU"}
    assert scores and all(scores[domain] == round(evaluation[domain]["mIoU"], 2) for domain in scores)
    assert summary["hub_commit"] == "fake-commit"
