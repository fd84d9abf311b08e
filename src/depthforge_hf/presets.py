"""Named model configurations.

`paper` is the published model (DINOv2-L/16 + Depth Anything V2-L/16); `demo` is a small random-initialised pair for
offline demos and CPU smoke runs (it has the same structure, only smaller widths and depths).
"""

from .modeling.configuration_depthforge import DepthForgeConfig


def paper_config(**overrides) -> DepthForgeConfig:
    """The paper's model: DINOv2-L/16 + Depth Anything V2-L/16, 512 crops, 19 Cityscapes classes."""
    return DepthForgeConfig(**overrides)


def demo_config(**overrides) -> DepthForgeConfig:
    """A small DepthForge (64-wide, 4-layer ViTs with patch 16, 64-wide head) that runs a 512x256 image on CPU in
    well under a second. Same architecture as the paper's model; random weights unless trained."""
    vit = dict(
        model_type="dinov2",
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        mlp_ratio=4,
        patch_size=16,
        image_size=256,
        layer_norm_eps=1e-6,
    )
    fields = dict(
        vfm_config=vit,
        depth_config=dict(
            backbone_config=dict(vit, layerscale_value=1.0, out_indices=[1, 2, 3, 4], reshape_hidden_states=False),
            patch_size=16,
            reassemble_hidden_size=64,
            neck_hidden_sizes=[16, 32, 64, 64],
            fusion_hidden_size=16,
            head_hidden_size=8,
        ),
        num_tokens=20,
        token_rank=8,
        feature_size=64,
        encoder_layers=2,
        decoder_layers=3,
        num_attention_heads=4,
        encoder_feedforward_dim=128,
        decoder_feedforward_dim=128,
        group_norm_groups=8,
        refinement_reduction=8,
        train_num_points=2048,
    )
    fields.update(overrides)
    return DepthForgeConfig(**fields)
