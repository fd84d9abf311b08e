"""Named encoder pairs (presets.py): architectures, licences, parameter counts and analytic FLOPs."""

import pytest
import torch
from conftest import timm_or_skip

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.cli import main
from depthforge_hf.modeling.configuration_depthforge import DepthForgeTimmEvaConfig
from depthforge_hf.presets import PRESETS, backbone_forward_flops, format_count


def test_paper_preset_is_the_default_config():
    preset = PRESETS["dinov2-large+da2-large"]
    assert not preset.uses_size_mismatch_extension and not preset.commercial_use
    config, default = preset.config(), DepthForgeConfig()
    for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size"):
        assert getattr(config.vfm_config, name) == getattr(default.vfm_config, name)
        assert getattr(config.depth_backbone_config, name) == getattr(default.depth_backbone_config, name)
    assert config.out_indices == [7, 11, 15, 23] and not config.allow_encoder_size_mismatch


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_offline_with_frozen_encoders(name):
    preset = PRESETS[name]
    config = preset.config(num_labels=5)
    assert config.num_labels == 5
    assert config.allow_encoder_size_mismatch == preset.uses_size_mismatch_extension
    assert config.vfm_config.patch_size == config.depth_backbone_config.patch_size == 16
    if isinstance(config.vfm_config, DepthForgeTimmEvaConfig):
        timm_or_skip()
    with torch.device("meta"):
        model = DepthForgeForSemanticSegmentation(config)
    breakdown = model.parameter_breakdown()
    assert breakdown["visual foundation model"]["trainable"] == breakdown["depth encoder"]["trainable"] == 0
    assert breakdown["visual foundation model"]["frozen"] > 0 and breakdown["depth encoder"]["frozen"] > 0
    expected_projection = 0
    if config.uses_depth_projection:
        depth_width, width = config.depth_backbone_config.hidden_size, config.vfm_config.hidden_size
        expected_projection = depth_width * width + width
    assert breakdown["depth projection"]["trainable"] == expected_projection


def test_licence_friendly_pairs_differ_from_the_paper_only_by_the_projection():
    """A smaller depth encoder changes the frozen count and adds only the projection to the trainable count."""
    counts = {}
    for name in ("dinov2-large+da2-large", "dinov2-large+da2-small"):
        with torch.device("meta"):
            breakdown = DepthForgeForSemanticSegmentation(PRESETS[name].config()).parameter_breakdown()
        counts[name] = breakdown
    paper, friendly = counts["dinov2-large+da2-large"], counts["dinov2-large+da2-small"]
    assert PRESETS["dinov2-large+da2-small"].commercial_use
    for part in ("depth-aware tokens", "refinement decoder", "pixel decoder", "transformer decoder"):
        assert paper[part] == friendly[part]
    assert friendly["depth projection"]["trainable"] == 384 * 1024 + 1024
    assert friendly["depth encoder"]["frozen"] < paper["depth encoder"]["frozen"] / 10


def test_analytic_flops_match_the_spec_anchors():
    """anchors.md: ViT-L at 512 / patch 16 (1025 tokens) is 722 GFLOPs, DepthForge's token overhead about 72."""
    flops = backbone_forward_flops(PRESETS["dinov2-large+da2-large"].config())
    assert round(flops["visual model"] / 1e9) == round(flops["depth encoder"] / 1e9) == 722
    assert round(flops["token updates"] / 1e9) == 72
    # a depth encoder of half the blocks and a third of the width costs under a tenth; the projection adds N C_d C
    small = backbone_forward_flops(PRESETS["dinov2-large+da2-small"].config())
    assert small["depth encoder"] < flops["depth encoder"] / 10
    assert small["token updates"] - flops["token updates"] == 2 * 24 * 1024 * 384 * 1024


def test_format_count():
    assert [format_count(v) for v in (722.4e9, 27_906_582, 1.77e12, 999)] == ["722G", "27.9M", "1.77T", "999"]


def test_presets_command_lists_licences(capsys):
    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    for name in PRESETS:
        assert name in listing
    assert "depth-anything/Depth-Anything-V2-Small-hf [Apache-2.0]" in listing
    assert "CC-BY-NC-4.0" in listing and "extension: sizes differ" in listing
