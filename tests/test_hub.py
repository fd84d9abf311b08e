"""Hub sharing tests (issue 7): the repository folder loads offline with remote code in a clean process and natively
with the package; bf16 weights; `push_to_hub` uploads exactly the folder `write_model_repo` writes (fake HfApi)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from tiny_inference import save_tiny_checkpoint
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

from depthforge_hf import DepthForgeForSemanticSegmentation, DepthForgeImageProcessor, cli
from depthforge_hf.data.synthetic import synthetic_dataset
from depthforge_hf.evaluation import evaluate_model
from depthforge_hf.hub import MODEL_CODE_FILES, folder_fingerprint, push_to_hub, upload_folder_to_hub, write_model_repo


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hub_checkpoint")
    model, _ = save_tiny_checkpoint(directory)
    sets = {"fog": synthetic_dataset("fog", "validation", num_samples=1, height=64, width=96, seed=2)}
    report = evaluate_model(model, sets, sources={"fog": ("depthforge-synthetic", "validation")})
    return directory, model, report


@pytest.fixture(scope="module")
def repo_folder(checkpoint, tmp_path_factory):
    directory, _, report = checkpoint
    return write_model_repo(directory, tmp_path_factory.mktemp("hub") / "repo", evaluation=report,
                            repo_id="someone/depthforge-tiny")


def test_folder_holds_weights_processor_code_card_and_report(repo_folder, checkpoint):
    names = set(os.listdir(repo_folder))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "evaluation.json",
            *MODEL_CODE_FILES} <= names
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth"))]
    config = json.loads((repo_folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_depthforge.DepthForgeConfig",
        "AutoModel": "modeling_depthforge.DepthForgeModel",
        "AutoModelForSemanticSegmentation": "modeling_depthforge.DepthForgeForSemanticSegmentation",
    }
    processor = json.loads((repo_folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_depthforge.DepthForgeImageProcessor"}
    assert processor["size"] == {"shortest_edge": 96, "longest_edge": 160}  # the checkpoint's processor, kept
    with safe_open(str(repo_folder / "model.safetensors"), "pt") as weights:  # full weights, frozen encoders included
        keys = set(weights.keys())
        assert weights.get_tensor(next(iter(keys))).dtype == torch.float32
    with safe_open(str(checkpoint[0] / "model.safetensors"), "pt") as original:
        assert keys == set(original.keys())
    assert json.loads((repo_folder / "evaluation.json").read_text()) == checkpoint[2].to_dict()


def test_loads_natively_when_the_package_is_installed(repo_folder, checkpoint):
    model = AutoModelForSemanticSegmentation.from_pretrained(repo_folder)
    assert type(model) is DepthForgeForSemanticSegmentation
    assert type(AutoImageProcessor.from_pretrained(repo_folder)) is DepthForgeImageProcessor
    for name, tensor in checkpoint[1].state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import json
    import sys


    class BlockDepthForge(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "depthforge_hf" or name.startswith("depthforge_hf."):
                raise ImportError("blocked for this test: " + name)
            return None


    sys.meta_path.insert(0, BlockDepthForge())
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForSemanticSegmentation

    folder, inputs_path, output_path = sys.argv[1:4]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(torch.load(inputs_path)).logits
    torch.save(logits, output_path)
    print(json.dumps({name: type(item).__module__ + "." + type(item).__name__
                      for name, item in (("config", config), ("model", model), ("base", base),
                                         ("processor", processor))}))
    """
)


def test_loads_with_remote_code_in_a_clean_offline_process(repo_folder, checkpoint, tmp_path):
    """`python -I` (no PYTHONPATH, no user site, the package blocked), HF_HUB_OFFLINE=1, fresh caches."""
    inputs = torch.randn(1, 3, 80, 112, generator=torch.Generator().manual_seed(0))
    torch.save(inputs, tmp_path / "inputs.pt")
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_"))}
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "mods"),
                       TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(repo_folder), str(tmp_path / "inputs.pt"),
         str(tmp_path / "logits.pt")],
        capture_output=True, text=True, env=environment, cwd=tmp_path, stdin=subprocess.DEVNULL, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    classes = json.loads(result.stdout.strip().splitlines()[-1])
    for name, suffix in (("config", "configuration_depthforge.DepthForgeConfig"),
                         ("model", "modeling_depthforge.DepthForgeForSemanticSegmentation"),
                         ("base", "modeling_depthforge.DepthForgeModel"),
                         ("processor", "image_processing_depthforge.DepthForgeImageProcessor")):
        assert classes[name].startswith("transformers_modules.") and classes[name].endswith(suffix), classes[name]
    with torch.no_grad():
        expected = checkpoint[1](inputs).logits
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-6)


def test_bfloat16_weights(checkpoint, tmp_path):
    directory, model, _ = checkpoint
    folder = write_model_repo(model, tmp_path / "bf16", dtype="bfloat16")  # from the in-memory model
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not converted
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(key).dtype for key in weights.keys()} == {torch.bfloat16}
    assert (folder / "model.safetensors").stat().st_size < 0.6 * (directory / "model.safetensors").stat().st_size
    loaded = DepthForgeForSemanticSegmentation.from_pretrained(folder, dtype=torch.float32)
    name = "depthforge.tokens.learnable_tokens_a"
    assert torch.equal(loaded.state_dict()[name], model.state_dict()[name].to(torch.bfloat16).float())


class FakeHfApi:
    """A stand-in for `huggingface_hub.HfApi` that records calls and what the uploaded folder held at upload time."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        self.uploaded = folder_fingerprint(kwargs["folder_path"])
        return "fake-commit"


def test_push_uploads_exactly_the_written_folder(checkpoint, tmp_path):
    directory, _, report = checkpoint
    api = FakeHfApi()
    commit = push_to_hub(str(directory), "someone/depthforge-tiny", evaluation=report, private=True,
                         revision="v1", api=api)
    assert commit == "fake-commit"
    assert [call[0] for call in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[1][2]["branch"] == "v1"
    upload = api.calls[2][2]
    assert upload["revision"] == "v1" and upload["delete_patterns"] == "*" and upload["repo_type"] == "model"
    written = write_model_repo(str(directory), tmp_path / "local", evaluation=report, repo_id="someone/depthforge-tiny")
    assert api.uploaded == folder_fingerprint(written)
    assert "model.safetensors" in api.uploaded and "modeling_depthforge.py" in api.uploaded


def test_command_line_writes_then_uploads_the_same_folder(checkpoint, tmp_path, monkeypatch):
    directory, _, _ = checkpoint
    api = FakeHfApi()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda token=None: api)
    run_report = tmp_path / "run_evaluation.json"  # a training run's evaluation.json carries its settings
    run_report.write_text(json.dumps({"evaluation": {}, "config": {"recipe": "demo", "max_steps": 300}}))
    assert cli.main(["push-to-hub", str(directory), "--repo-id", "someone/x", "--folder", str(tmp_path / "kept"),
                     "--dtype", "bfloat16", "--training-config", str(run_report)]) == 0
    assert api.uploaded == folder_fingerprint(tmp_path / "kept")
    assert "| steps | 300 |" in (tmp_path / "kept" / "README.md").read_text()
    with pytest.raises(FileExistsError):
        cli.main(["push-to-hub", str(directory), "--folder", str(tmp_path / "kept")])


def test_upload_accepts_an_adapter_folder_and_refuses_a_non_repository(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "README.md").write_text("---\nbase_model: facebook/dinov2-large\n---\n")
    (adapter / "adapter_model.safetensors").write_bytes(b"{}")
    api = FakeHfApi()
    upload_folder_to_hub(adapter, "someone/adapter", api=api)
    assert set(api.uploaded) == {"README.md", "adapter_model.safetensors"}
    with pytest.raises(ValueError, match="README.md"):
        upload_folder_to_hub(tmp_path / "empty", "someone/x", api=FakeHfApi())
