"""Regenerate the bundled example image `src/depthforge_hf/assets/example_street.png` (deterministic).

A 256x512 procedural street scene (sky, buildings, trees, road, sidewalk, a car) for offline demos.
Run: python scripts/make_example_image.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "depthforge_hf" / "assets" / "example_street.png"


def make_example_street(height: int = 256, width: int = 512, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, height)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = np.broadcast_to(sky, (height, width, 3)).copy()
    canvas = Image.fromarray(image.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    horizon = int(height * 0.55)
    x = 0
    while x < width:  # buildings with windows
        building_width = int(rng.integers(50, 110))
        top = int(rng.integers(20, horizon - 40))
        colour = tuple(int(c) for c in rng.integers(90, 180, 3))
        draw.rectangle([x, top, x + building_width, horizon], fill=colour)
        for wy in range(top + 8, horizon - 10, 16):
            for wx in range(x + 6, x + building_width - 10, 14):
                draw.rectangle([wx, wy, wx + 6, wy + 8], fill=(60, 70, 90))
        x += building_width + int(rng.integers(0, 10))
    for tx in (60, 300, 450):  # trees
        draw.rectangle([tx - 3, horizon - 50, tx + 3, horizon], fill=(80, 60, 40))
        draw.ellipse([tx - 25, horizon - 95, tx + 25, horizon - 40], fill=(50, 120, 50))
    draw.polygon([(0, horizon), (width, horizon), (width, height), (0, height)], fill=(95, 95, 100))  # road
    draw.polygon([(0, horizon), (width, horizon), (width, horizon + 12), (0, horizon + 22)], fill=(170, 160, 150))
    draw.rectangle([330, horizon - 60, 332, horizon - 5], fill=(120, 120, 120))  # pole
    draw.rectangle([320, horizon - 75, 342, horizon - 58], fill=(220, 200, 40))  # sign
    draw.rounded_rectangle([150, horizon + 10, 280, horizon + 60], radius=12, fill=(180, 30, 30))  # car
    draw.rectangle([175, horizon - 12, 255, horizon + 14], fill=(150, 25, 25))
    for wx in (170, 260):
        draw.ellipse([wx - 12, horizon + 48, wx + 12, horizon + 72], fill=(20, 20, 20))
    noise = rng.normal(0, 6, (height, width, 3))
    pixels = np.clip(np.asarray(canvas.filter(ImageFilter.SMOOTH), dtype=np.float64) + noise, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


if __name__ == "__main__":
    make_example_street().save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT}")
