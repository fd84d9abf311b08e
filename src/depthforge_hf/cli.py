"""The `depthforge` command line."""

import argparse
import sys
from importlib import resources

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGENET_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


def example_image() -> Image.Image:
    """The bundled 256x512 procedural street scene."""
    with resources.files("depthforge_hf").joinpath("assets/example_street.png").open("rb") as handle:
        return Image.open(handle).convert("RGB")


def run_demo(args: argparse.Namespace) -> int:
    """Forward pass of a small random-initialised DepthForge on the bundled image; prints the class histogram."""
    from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation
    from .presets import demo_config

    torch.manual_seed(args.seed)
    model = DepthForgeForSemanticSegmentation(demo_config()).eval()
    image = Image.open(args.image).convert("RGB") if args.image else example_image()
    pixels = (np.asarray(image, dtype=np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    pixel_values = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = model(pixel_values).logits
    prediction = logits.argmax(dim=1)[0]
    counts = torch.bincount(prediction.flatten(), minlength=model.config.num_labels)
    breakdown = model.parameter_breakdown()
    trainable = sum(part["trainable"] for part in breakdown.values())
    frozen = sum(part["frozen"] for part in breakdown.values())
    print(f"DepthForge demo model (random weights): {trainable:,} trainable / {frozen:,} frozen parameters")
    print(f"image {image.width}x{image.height} -> logits {tuple(logits.shape)}")
    print("predicted class histogram (pixels):")
    for class_id in counts.nonzero().flatten().tolist():
        share = 100.0 * counts[class_id].item() / prediction.numel()
        print(f"  {class_id:3d} {model.config.id2label[class_id]:15s} {counts[class_id].item():8d}  {share:5.1f}%")
    return 0


def run_presets(args: argparse.Namespace) -> int:
    """List the named encoder pairs with their checkpoints and weight licences."""
    from .presets import PRESETS

    for name, preset in PRESETS.items():
        pairing = "extension: sizes differ" if preset.uses_size_mismatch_extension else "paper pairing"
        use = "commercial use allowed" if preset.commercial_use else "non-commercial"
        print(f"{name}  ({preset.description}; {pairing}; {use})")
        print(f"    visual: {preset.vfm.hub_id} [{preset.vfm.licence}]")
        print(f"    depth:  {preset.depth.hub_id} [{preset.depth.licence}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthforge", description="DepthForge for domain-generalized segmentation.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a small random model on the bundled example image (offline)")
    demo.add_argument("--image", help="an image file instead of the bundled example")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=run_demo)
    presets = commands.add_parser("presets", help="list the named encoder pairs, their checkpoints and licences")
    presets.set_defaults(handler=run_presets)

    from . import convert_official, evaluation, hub, segment, training
    from .data import prepare

    train = commands.add_parser("train", help="train (with no data arguments: the offline synthetic demo)")
    training.add_arguments(train)
    train.set_defaults(handler=training.run)

    evaluator = commands.add_parser("evaluate", help="mIoU per domain with the official test protocol (JSON/Markdown)")
    evaluation.add_arguments(evaluator)
    evaluator.set_defaults(handler=evaluation.run)

    sharer = commands.add_parser("push-to-hub", help="write a Hub repository folder (weights, code, card) and upload it")
    hub.add_arguments(sharer)
    sharer.set_defaults(handler=hub.run)

    segmenter = commands.add_parser("segment", help="segment images, folders or videos with a saved model")
    segment.add_arguments(segmenter)
    segmenter.set_defaults(handler=segment.run)

    converter = commands.add_parser("convert-official", help="convert official DepthForge / Rein / pretrain files")
    convert_official.add_arguments(converter)
    converter.set_defaults(handler=convert_official.run)

    prepare_data = commands.add_parser(
        "prepare-data", help="convert benchmark folders (or your own) into streaming parquet shards", add_help=False
    )
    # The data preparation parser has one sub-command per dataset layout: hand it everything that follows.
    prepare_data.add_argument("arguments", nargs=argparse.REMAINDER)
    prepare_data.set_defaults(handler=lambda args: prepare.main(args.arguments))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare-data"]:  # argparse's REMAINDER would not pass a leading --help through
        from .data import prepare

        return prepare.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
