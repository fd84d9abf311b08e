"""Shared fixtures: tiny random DepthForge configs that run in milliseconds on CPU."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

try:  # streaming tests would otherwise sleep 5 s at the end of every pass (datasets' thread shutdown wait)
    import datasets

    datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
except ImportError:  # pragma: no cover
    pass


def tiny_vit(**overrides) -> dict:
    vit = dict(
        model_type="dinov2",
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=16,
        image_size=64,
    )
    vit.update(overrides)
    return vit


def tiny_config_kwargs(**overrides) -> dict:
    """Keyword arguments of a tiny DepthForgeConfig (DINOv2-like 32-wide 4-layer ViTs, 10 tokens, 32-wide head)."""
    vit = tiny_vit(**overrides.pop("vit", {}))
    kwargs = dict(
        vfm_config=vit,
        depth_config=dict(
            backbone_config=dict(vit, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
            patch_size=vit["patch_size"],
            reassemble_hidden_size=vit["hidden_size"],
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            head_hidden_size=8,
        ),
        num_tokens=10,
        token_rank=4,
        feature_size=32,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=4,
        encoder_feedforward_dim=64,
        decoder_feedforward_dim=64,
        group_norm_groups=8,
        train_num_points=256,
    )
    kwargs.update(overrides)
    return kwargs


def timm_or_skip():
    """timm (the `eva` extra), or skip the EVA02 test with the reason shown in the summary."""
    try:
        import timm
    except ImportError as error:
        pytest.skip(f'EVA02 needs timm (pip install "depthforge-hf[eva]"): {error}')
    except RuntimeError as error:  # a torchvision built for another torch raises this at import
        pytest.skip(f"timm is installed but not importable with this torch build: {error}")
    return timm


@pytest.fixture
def tiny_config():
    from depthforge_hf import DepthForgeConfig

    return DepthForgeConfig(**tiny_config_kwargs())
