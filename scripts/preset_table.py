"""Print the README table of the named presets: licences, parameter counts and forward FLOPs per 512x512 crop.

Parameter counts come from the model built on the meta device (no weights are allocated, nothing is downloaded).
FLOPs: the two ViTs and the token updates are analytic (`depthforge_hf.presets.backbone_forward_flops`, the
spec/anchors.md convention, 1 MAC = 2 FLOPs); the head (refinement decoder, pixel decoder, masked-attention decoder,
semantic logits) is counted by `torch.utils.flop_counter.FlopCounterMode` on a real CPU forward with random weights
(matmul, convolution and attention ops; the deformable-attention sampling itself is not counted). The EVA02 rows need
timm (`pip install "depthforge-hf[eva]"`); without it they are printed with "needs timm".

    python scripts/preset_table.py
"""

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from depthforge_hf import DepthForgeForSemanticSegmentation
from depthforge_hf.presets import PRESETS, backbone_forward_flops, format_count


def head_flops(model: DepthForgeForSemanticSegmentation, crop: int) -> int:
    """Counted forward FLOPs of everything after the backbone, for one crop (random weights on CPU)."""
    head_parts = [model.depthforge.tokens, model.refinement, model.pixel_decoder, model.transformer_decoder]
    for part in head_parts:
        if part is not None:
            part.to_empty(device="cpu")
            for parameter in part.parameters():
                torch.nn.init.normal_(parameter, std=0.02)
    width = model.config.vfm_config.hidden_size
    features = [torch.randn(1, width, crop // stride, crop // stride) for stride in (4, 8, 16, 32)]
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        if model.refinement is not None:
            features[0] = model.refinement(features) + features[0]
        pixel_output = model.pixel_decoder(features, return_dict=True)
        class_logits, mask_logits = model.transformer_decoder(
            pixel_output.multi_scale_features, pixel_output.mask_features, model.depthforge.tokens.queries()
        )
        model.semantic_logits(class_logits[-1], mask_logits[-1], (crop, crop))
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=512)
    args = parser.parse_args()
    print("| preset | visual model (licence) | depth model (licence) | commercial use | paper pairing | trainable | "
          "frozen | ViTs + tokens (analytic) | head (counted) | total |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    head_cache = {}
    for name, preset in PRESETS.items():
        config = preset.config(vfm_config={**preset.vfm.config, "image_size": args.crop})
        backbone = sum(backbone_forward_flops(config, args.crop, args.crop).values())
        try:
            with torch.device("meta"):
                model = DepthForgeForSemanticSegmentation(config)
        except ImportError:
            trainable = frozen = head = "needs timm"
            total = "needs timm"
        else:
            breakdown = model.parameter_breakdown()
            trainable = format_count(sum(part["trainable"] for part in breakdown.values()))
            frozen = format_count(sum(part["frozen"] for part in breakdown.values()))
            width = config.vfm_config.hidden_size
            if width not in head_cache:
                head_cache[width] = head_flops(model, args.crop)
            head = format_count(head_cache[width])
            total = format_count(backbone + head_cache[width])
        print(
            f"| `{name}` | {preset.vfm.hub_id} ({preset.vfm.licence}) | {preset.depth.hub_id} ({preset.depth.licence}) "
            f"| {'yes' if preset.commercial_use else 'no'} | {'no (extension)' if preset.uses_size_mismatch_extension else 'yes'} "
            f"| {trainable} | {frozen} | {format_count(backbone)} | {head} | {total} |"
        )


if __name__ == "__main__":
    main()
