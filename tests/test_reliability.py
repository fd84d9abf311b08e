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
