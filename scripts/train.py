"""Train DepthForge: `accelerate launch scripts/train.py --recipe gta2cityscapes --train-data ... --eval-data ...`.

Same as the `depthforge train` command; with no dataset arguments it runs the offline synthetic demo.
"""

import sys

from depthforge_hf.training import main

if __name__ == "__main__":
    sys.exit(main())
