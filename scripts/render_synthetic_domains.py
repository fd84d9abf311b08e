"""Renders docs/images/synthetic_domains.png: one street per row, one domain per column, plus its label.

PYTHONPATH=src python scripts/render_synthetic_domains.py
"""

import argparse
import os

import numpy as np
from PIL import Image, ImageDraw

from depthforge_hf.data.labels import colorize_train_ids
from depthforge_hf.data.synthetic import DOMAINS, SyntheticStreetScenes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join("docs", "images", "synthetic_domains.png"))
    parser.add_argument("--indices", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--tile-width", type=int, default=256)
    args = parser.parse_args(argv)

    generator = SyntheticStreetScenes(height=256, width=512, seed=0)
    tile_w, tile_h = args.tile_width, args.tile_width // 2
    header = 18
    columns = [*DOMAINS, "label"]
    canvas = Image.new("RGB", (tile_w * len(columns), header + tile_h * len(args.indices)), "white")
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(columns):
        draw.text((column * tile_w + 6, 3), name, fill="black")
    for row, index in enumerate(args.indices):
        tiles = [generator.sample(index, domain, "validation").image for domain in DOMAINS]
        tiles.append(colorize_train_ids(generator.scene(index, "validation").label))
        for column, tile in enumerate(tiles):
            image = Image.fromarray(np.asarray(tile)).resize(
                (tile_w, tile_h), Image.BILINEAR if column < len(DOMAINS) else Image.NEAREST
            )
            canvas.paste(image, (column * tile_w, header + row * tile_h))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    # A 256-colour palette keeps the picture small enough for the README (noise and fog defeat PNG compression).
    canvas.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        args.output, optimize=True
    )
    print(f"wrote {args.output} ({os.path.getsize(args.output) // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
