"""Evaluate DepthForge: `accelerate launch scripts/evaluate.py MODEL --data cityscapes=shards/cityscapes ...`.

Same as the `depthforge evaluate` command; with no `--data` it evaluates on the synthetic benchmark's domains, offline.
"""

import sys

from depthforge_hf.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
