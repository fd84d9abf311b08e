"""Reading official mmseg `.py` configs without mmseg: `_base_` inheritance, MMEngine merge semantics, the literal
subset, and refusal to execute anything else. The fake config tree mimics the official DepthForge configs
(`configs/_base_/models/depthforge_dinov2_mask2former.py` + a top config per experiment, method.md §2, §3.1, §6.4,
§7.3) at the official sizes, plus a tiny experiment config that overrides the sizes for a conversion test."""

import textwrap

import pytest
import torch

from depthforge_hf.convert_official import main, to_official_state_dict
from depthforge_hf.modeling.configuration_depthforge import DepthForgeConfig
from depthforge_hf.modeling.modeling_depthforge import DepthForgeForSemanticSegmentation
from depthforge_hf.official_config import OfficialConfigError, load_official_config, official_model_config

BASE_MODEL = """
# model settings
norm_cfg = dict(type="SyncBN", requires_grad=True)
crop_size = (512, 512)
num_classes = 19
model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        size=crop_size,
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
    ),
    backbone=dict(
        type="DepthForgeDinoVisionTransformer",
        depthforge_config=dict(
            type="DepthForgeReins",
            token_length=100,
            embed_dims=1024,
            num_layers=24,
            patch_size=16,
            link_token_to_query=True,
            lora_dim=16,
        ),
        patch_size=16,
        embed_dim=1024,
        depth=24,
        num_heads=16,
        mlp_ratio=4,
        img_size=512,
        ffn_layer="mlp",
        init_values=1e-05,
        block_chunks=0,
        qkv_bias=True,
        proj_bias=True,
        ffn_bias=True,
        init_cfg=dict(type="Pretrained", checkpoint="checkpoints/dinov2_converted_depth.pth"),
    ),
    decode_head=dict(
        type="DepthForgeMask2FormerHead",
        replace_query_feat=True,
        in_channels=[1024, 1024, 1024, 1024],
        strides=[4, 8, 16, 32],
        feat_channels=256,
        out_channels=256,
        num_classes=num_classes,
        num_queries=100,
        num_transformer_feat_level=3,
        align_corners=False,
        pixel_decoder=dict(
            type="mmdet.MSDeformAttnPixelDecoder",
            num_outs=3,
            norm_cfg=dict(type="GN", num_groups=32),
            act_cfg=dict(type="ReLU"),
            encoder=dict(  # DeformableDetrTransformerEncoder
                num_layers=6,
                layer_cfg=dict(  # DeformableDetrTransformerEncoderLayer
                    self_attn_cfg=dict(  # MultiScaleDeformableAttention
                        embed_dims=256,
                        num_heads=8,
                        num_levels=3,
                        num_points=4,
                        im2col_step=64,
                        dropout=0.0,
                        batch_first=True,
                        norm_cfg=None,
                        init_cfg=None,
                    ),
                    ffn_cfg=dict(
                        embed_dims=256,
                        feedforward_channels=1024,
                        num_fcs=2,
                        ffn_drop=0.0,
                        act_cfg=dict(type="ReLU", inplace=True),
                    ),
                ),
                init_cfg=None,
            ),
            positional_encoding=dict(num_feats=128, normalize=True),  # SinePositionalEncoding
            init_cfg=None,
        ),
        enforce_decoder_input_project=False,
        positional_encoding=dict(num_feats=128, normalize=True),  # SinePositionalEncoding
        transformer_decoder=dict(  # Mask2FormerTransformerDecoder
            return_intermediate=True,
            num_layers=9,
            layer_cfg=dict(  # Mask2FormerTransformerDecoderLayer
                self_attn_cfg=dict(
                    embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0, dropout_layer=None, batch_first=True
                ),
                cross_attn_cfg=dict(
                    embed_dims=256, num_heads=8, attn_drop=0.0, proj_drop=0.0, dropout_layer=None, batch_first=True
                ),
                ffn_cfg=dict(
                    embed_dims=256,
                    feedforward_channels=2048,
                    num_fcs=2,
                    act_cfg=dict(type="ReLU", inplace=True),
                    ffn_drop=0.0,
                    dropout_layer=None,
                    add_identity=True,
                ),
            ),
            init_cfg=None,
        ),
        loss_cls=dict(
            type="mmdet.CrossEntropyLoss",
            use_sigmoid=False,
            loss_weight=2.0,
            reduction="mean",
            class_weight=[1.0] * num_classes + [0.1],
        ),
        loss_mask=dict(type="mmdet.CrossEntropyLoss", use_sigmoid=True, reduction="mean", loss_weight=5.0),
        loss_dice=dict(
            type="mmdet.DiceLoss",
            use_sigmoid=True,
            activate=True,
            reduction="mean",
            naive_dice=True,
            eps=1.0,
            loss_weight=5.0,
        ),
        train_cfg=dict(
            num_points=12544,
            oversample_ratio=3.0,
            importance_sample_ratio=0.75,
            assigner=dict(
                type="mmdet.HungarianAssigner",
                match_costs=[
                    dict(type="mmdet.ClassificationCost", weight=2.0),
                    dict(type="mmdet.CrossEntropyLossCost", weight=5.0, use_sigmoid=True),
                    dict(type="mmdet.DiceCost", weight=5.0, pred_act=True, eps=1.0),
                ],
            ),
            sampler=dict(type="mmdet.MaskPseudoSampler"),
        ),
    ),
    # model training and testing settings
    train_cfg=dict(),
    test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341)),
)
"""

BASE_DATASET = """
gta_type = "CityscapesDataset"
gta_root = "data/gta/"
gta_crop_size = (512, 512)
gta_train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomChoiceResize", scales=[int(1024 * x * 0.1) for x in range(5, 21)], resize_type="ResizeShortestEdge", max_size=4096),
    dict(type="RandomCrop", crop_size=gta_crop_size, cat_max_ratio=0.75),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PhotoMetricDistortion"),
    dict(type="PackSegInputs"),
]
train_dataloader = dict(batch_size=2, num_workers=2, dataset=dict(type=gta_type, data_root=gta_root, pipeline=gta_train_pipeline))
"""

BASE_RUNTIME = """
default_scope = "mmseg"
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="nccl"))
vis_backends = [dict(type="LocalVisBackend")]
log_level = "INFO"
load_from = None
resume = False
tta_model = dict(type="SegTTAModel")
optim_wrapper = dict(type="OptimWrapper", optimizer=dict(type="SGD", lr=0.01), clip_grad=None)
"""

TOP_GTAV = """
_base_ = [
    "../_base_/datasets/dg_gta_512x512.py",
    "../_base_/default_runtime.py",
    "../_base_/models/depthforge_dinov2_mask2former.py",
]
model = dict(
    backbone=dict(
        init_cfg=dict(
            checkpoint="checkpoints/dinov2_converted_depth.pth",
            type="Pretrained",
        ),
    ),
    data_preprocessor=dict(size={{_base_.crop_size}}),
)
train_dataloader = dict(batch_size=5)
# AdamW replaces the runtime's SGD wrapper entirely
optim_wrapper = dict(
    _delete_=True,
    constructor="PEFTOptimWrapperConstructor",
    optimizer=dict(lr=0.0001, type="AdamW", weight_decay=0.05, eps=1e-08, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        custom_keys={
            "norm": dict(decay_mult=0.0),
            "query_embed": dict(lr_mult=1.0, decay_mult=0.0),
            "level_embed": dict(lr_mult=1.0, decay_mult=0.0),
            "learnable_tokens": dict(lr_mult=1.0, decay_mult=0.0),
            "depthforge.scale": dict(lr_mult=1.0, decay_mult=0.0),
        },
        norm_decay_mult=0.0,
    ),
)
param_scheduler = [dict(type="OneCycleLR", eta_max=1e-4, total_steps=50000, pct_start=0.1, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=50000, val_interval=5000)
import os.path as osp
work_dir = osp.join("work_dirs", "depthforge")
marker = __import__("os").system("touch {marker}")
"""

# A tiny experiment on top of the official base (sizes of the conversion test model below).
TOP_TINY = """
_base_ = "../_base_/models/depthforge_dinov2_mask2former.py"
num_classes = 5
width = 32
model = dict(
    backbone=dict(
        depthforge_config=dict(token_length=6, embed_dims=width, num_layers=4, lora_dim=3, query_dims=width),
        embed_dim=width, depth=4, num_heads=2, mlp_ratio=2, img_size=64, out_indices=[0, 1, 2, 3],
    ),
    decode_head=dict(
        in_channels=[width] * 4, feat_channels=width, out_channels=width, num_classes=num_classes, num_queries=6,
        pixel_decoder=dict(
            norm_cfg=dict(num_groups=8),
            encoder=dict(
                num_layers=1,
                layer_cfg=dict(
                    _delete_=True,
                    self_attn_cfg=dict(embed_dims=width, num_heads=4, num_levels=3, num_points=4),
                    ffn_cfg=dict(embed_dims=width, feedforward_channels=48),
                ),
            ),
            positional_encoding=dict(num_feats=width // 2),
        ),
        positional_encoding=dict(num_feats=width // 2),
        transformer_decoder=dict(
            num_layers=4,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=width, num_heads=4),
                cross_attn_cfg=dict(embed_dims=width, num_heads=4),
                ffn_cfg=dict(embed_dims=width, feedforward_channels=40),
            ),
        ),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.25]),
    ),
)
"""


@pytest.fixture
def config_tree(tmp_path):
    marker = tmp_path / "config-code-ran"
    files = {
        "configs/_base_/models/depthforge_dinov2_mask2former.py": BASE_MODEL,
        "configs/_base_/datasets/dg_gta_512x512.py": BASE_DATASET,
        "configs/_base_/default_runtime.py": BASE_RUNTIME,
        "configs/dinov2/depthforge_dinov2_mask2former_512x512_bs1x4.py": TOP_GTAV.replace("{marker}", str(marker)),
        "configs/dinov2/tiny.py": TOP_TINY,
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "configs", marker


def test_reads_the_official_config_tree(config_tree):
    configs, marker = config_tree
    config, unresolved = load_official_config(configs / "dinov2/depthforge_dinov2_mask2former_512x512_bs1x4.py")
    model = config["model"]
    # From the base model file, untouched by the top file.
    assert model["type"] == "EncoderDecoder"
    assert model["backbone"]["depthforge_config"]["lora_dim"] == 16
    assert model["backbone"]["num_heads"] == 16
    assert model["decode_head"]["transformer_decoder"]["num_layers"] == 9
    assert model["decode_head"]["pixel_decoder"]["norm_cfg"] == {"type": "GN", "num_groups": 32}
    assert model["decode_head"]["loss_cls"]["class_weight"] == [1.0] * 19 + [0.1]
    assert model["test_cfg"] == {"mode": "slide", "crop_size": (512, 512), "stride": (341, 341)}
    # Merged: the top file's nested dict updates the base without dropping the base's siblings.
    assert model["backbone"]["init_cfg"] == {
        "checkpoint": "checkpoints/dinov2_converted_depth.pth",
        "type": "Pretrained",
    }
    assert model["backbone"]["embed_dim"] == 1024
    assert model["data_preprocessor"]["size"] == (512, 512)  # {{_base_.crop_size}}
    assert model["data_preprocessor"]["mean"] == [123.675, 116.28, 103.53]
    assert config["train_dataloader"]["batch_size"] == 5
    assert config["train_dataloader"]["num_workers"] == 2
    scales = config["gta_train_pipeline"][2]["scales"]
    assert scales == [int(1024 * x * 0.1) for x in range(5, 21)]
    # _delete_=True replaces the runtime's optimizer wrapper instead of merging into it.
    assert config["optim_wrapper"]["optimizer"] == {
        "lr": 0.0001, "type": "AdamW", "weight_decay": 0.05, "eps": 1e-08, "betas": (0.9, 0.999),
    }  # fmt: skip
    assert "type" not in config["optim_wrapper"] and "clip_grad" not in config["optim_wrapper"]
    assert "_delete_" not in repr(config)
    assert config["param_scheduler"][0]["total_steps"] == 50000
    # Code is never run: imports, attribute calls and __import__ are reported, not executed.
    assert not marker.exists()
    assert any("osp.join" in line and ":" in line for line in unresolved)
    assert any("__import__" in line for line in unresolved)
    assert "osp" not in config


def test_delete_marker_in_a_nested_override(config_tree):
    configs, _ = config_tree
    model, unresolved = official_model_config(configs / "dinov2/tiny.py")
    layer_cfg = model["decode_head"]["pixel_decoder"]["encoder"]["layer_cfg"]
    # Replaced entirely: the base's im2col_step / dropout / ffn act_cfg are gone.
    assert layer_cfg == {
        "self_attn_cfg": {"embed_dims": 32, "num_heads": 4, "num_levels": 3, "num_points": 4},
        "ffn_cfg": {"embed_dims": 32, "feedforward_channels": 48},
    }
    # Merged: the decoder layer keeps the base's dropout settings next to the override.
    assert model["decode_head"]["transformer_decoder"]["layer_cfg"]["self_attn_cfg"]["attn_drop"] == 0.0
    assert model["decode_head"]["loss_cls"]["class_weight"] == [1.0] * 5 + [0.25]
    assert model["decode_head"]["in_channels"] == [32] * 4
    assert not unresolved


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.py": "_base_ = 'b.py'\nx = 1\n", "b.py": "_base_ = 'a.py'\n"}, "Circular"),
        ({"a.py": "_base_ = ['b.py', 'c.py']\n", "b.py": "x = 1\n", "c.py": "x = 2\n"}, r"more than once"),
        ({"a.py": "_base_ = 'b.py'\nx = dict(y=1)\n", "b.py": "x = 3\n"}, "_delete_"),
        ({"a.py": "_base_ = 'missing.py'\n"}, "not found"),
        ({"a.py": "_base_ = 'mmdet::_base_/models/mask2former.py'\n"}, "installed package"),
        ({"a.py": "model = dict(\n"}, "not valid Python"),
    ],
)
def test_config_errors(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(OfficialConfigError, match=message):
        load_official_config(tmp_path / "a.py")


def test_literal_subset_and_guards(tmp_path):
    path = tmp_path / "a.py"
    path.write_text(
        textwrap.dedent(
            """
            a = 3
            a += 2
            b, c = (1, [2, 3])
            d = dict(**dict(x=1), y=a * 2, z=[*c, 4])
            e = {"k": a // 2, **d}
            f = [x for x in range(4) if x % 2]
            g = c[-1] if a > 4 else None
            h = f"crop{a}"
            huge = [0] * 10**9
            long = list(range(10**10))
            lam = lambda x: x
            attr = dict(k=open("/etc/passwd").read())
            """
        )
    )
    config, unresolved = load_official_config(path)
    assert config["a"] == 5 and config["b"] == 1 and config["c"] == [2, 3]
    assert config["d"] == {"x": 1, "y": 10, "z": [2, 3, 4]}
    assert config["e"] == {"k": 2, "x": 1, "y": 10, "z": [2, 3, 4]}
    assert config["f"] == [1, 3] and config["g"] == 3 and config["h"] == "crop5"
    assert type(config["huge"]).__name__ == "Unresolved"
    assert type(config["long"]).__name__ == "Unresolved"
    assert type(config["lam"]).__name__ == "Unresolved"
    assert type(config["attr"]["k"]).__name__ == "Unresolved"  # the dict survives, the call is not made
    assert len(unresolved) == 4


def test_convert_with_the_python_config(config_tree, tmp_path):
    """A tiny official-format checkpoint whose heads, GroupNorm groups and out_indices are only in the `.py` config:
    the CLI reads them from it (through `_base_` and `_delete_`) and the saved model matches the original."""
    configs, _ = config_tree
    vit = dict(model_type="dinov2", hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2,
               patch_size=16, image_size=64)  # fmt: skip
    config = DepthForgeConfig(
        vfm_config=vit,
        depth_config=dict(backbone_config=dict(vit, layerscale_value=1.0, reshape_hidden_states=False),
                          patch_size=16, reassemble_hidden_size=32),  # fmt: skip
        num_tokens=6, token_rank=3, out_indices=[0, 1, 2, 3], feature_size=32, encoder_layers=1, decoder_layers=4,
        num_attention_heads=4, encoder_feedforward_dim=48, decoder_feedforward_dim=40, group_norm_groups=8,
        num_labels=5, no_object_weight=0.25,
    )  # fmt: skip
    torch.manual_seed(0)
    model = DepthForgeForSemanticSegmentation(config).eval()
    checkpoint = tmp_path / "full.pth"
    torch.save(to_official_state_dict(model.state_dict()), checkpoint)
    output = tmp_path / "out"
    assert main(["checkpoint", str(checkpoint), "--official-config", str(configs / "dinov2/tiny.py"),
                 "--output", str(output)]) == 0  # fmt: skip
    reloaded = DepthForgeForSemanticSegmentation.from_pretrained(output).eval()
    for name in ("num_attention_heads", "group_norm_groups", "out_indices", "decoder_layers", "num_labels",
                 "no_object_weight", "token_rank"):  # fmt: skip
        assert getattr(reloaded.config, name) == getattr(config, name), name
    assert reloaded.config.vfm_config.num_attention_heads == 2
    pixels = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(pixels).logits, reloaded(pixels).logits)
