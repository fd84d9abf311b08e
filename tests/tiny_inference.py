"""Tiny random DepthForge checkpoints for the inference tests (shared by test_inference/test_pipeline/test_segment_cli)."""

import torch

from depthforge_hf import DepthForgeConfig, DepthForgeForSemanticSegmentation, DepthForgeImageProcessor

VIT = dict(
    model_type="dinov2",
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    mlp_ratio=2,
    patch_size=16,
    image_size=64,
)


def tiny_config(**overrides) -> DepthForgeConfig:
    kwargs = dict(
        vfm_config=VIT,
        depth_config=dict(
            backbone_config=dict(VIT, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
            patch_size=16,
            reassemble_hidden_size=32,
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
        # Small windows so that test images of ~100 px exercise the sliding window.
        inference_window_size=64,
        inference_stride=43,
        inference_window_batch_size=3,
    )
    kwargs.update(overrides)
    return DepthForgeConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> DepthForgeForSemanticSegmentation:
    torch.manual_seed(seed)
    model = DepthForgeForSemanticSegmentation(tiny_config(**overrides)).eval()
    # Random heads give near-uniform class scores; sharpen the class predictor so that several classes win somewhere
    # (otherwise one class takes every pixel and per-class checks say little).
    with torch.no_grad():
        model.transformer_decoder.class_predictor.weight.mul_(20.0)
        model.depthforge.tokens.merge.weight.mul_(10.0)
    return model


def tiny_processor(**overrides) -> DepthForgeImageProcessor:
    """The official keep-ratio policy, scaled down: short side 96, long side at most 160."""
    kwargs = dict(size={"shortest_edge": 96, "longest_edge": 160})
    kwargs.update(overrides)
    return DepthForgeImageProcessor(**kwargs)


def save_tiny_checkpoint(directory, seed: int = 0, processor_kwargs=None, **overrides):
    """Save a tiny model + processor as `save_pretrained` does for real checkpoints; returns (model, processor)."""
    model = tiny_model(seed, **overrides)
    processor = tiny_processor(**(processor_kwargs or {}))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor
