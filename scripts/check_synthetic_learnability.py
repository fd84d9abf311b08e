"""Checks that the synthetic benchmark is learnable and shifted: a tiny CNN trained for a few minutes on the source
domain (CPU) must beat the majority-class baseline on source validation by more than 10 mIoU points; its scores on
the target domains show the domain gap.

    PYTHONPATH=src python scripts/check_synthetic_learnability.py --minutes 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from depthforge_hf.data.synthetic import DOMAINS, SOURCE_DOMAIN, SyntheticStreetScenes
from depthforge_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

NUM_CLASSES = 19


class TinySegmenter(nn.Module):
    """Four strided conv blocks and a bilinear upsampling head (~0.1 M parameters)."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
            )

        self.encoder = nn.Sequential(
            block(3, width, 2), block(width, width, 1), block(width, 2 * width, 2), block(2 * width, 2 * width, 1),
            block(2 * width, 2 * width, 2), block(2 * width, 2 * width, 1),
        )  # fmt: skip
        self.classifier = nn.Conv2d(2 * width, NUM_CLASSES, 1)

    def forward(self, pixel_values):
        logits = self.classifier(self.encoder(pixel_values))
        return nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)


def to_tensors(samples):
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).float()
    labels = torch.from_numpy(np.stack([s.label for s in samples]).astype(np.int64))
    return (images - mean) / std, labels


def miou(confusion: np.ndarray) -> float:
    intersection = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = confusion.sum(1) > 0  # classes that occur in the ground truth
    return float(np.mean(intersection[present] / np.maximum(union[present], 1)) * 100)


def confusion_of(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    valid = labels != 255
    return np.bincount(labels[valid] * NUM_CLASSES + predictions[valid], minlength=NUM_CLASSES * NUM_CLASSES).reshape(
        NUM_CLASSES, NUM_CLASSES
    )


def run(
    minutes: float = 3.0,
    height: int = 128,
    width: int = 256,
    num_train: int = 400,
    num_validation: int = 40,
    seed: int = 0,
    log=print,
) -> dict:
    torch.manual_seed(seed)
    generator = SyntheticStreetScenes(height, width, seed)
    start = time.perf_counter()
    train_images, train_labels = to_tensors([generator.sample(i, SOURCE_DOMAIN, "train") for i in range(num_train)])
    log(f"generated {num_train} training images in {time.perf_counter() - start:.1f} s")
    majority_class = int(np.bincount(train_labels.numpy().ravel(), minlength=NUM_CLASSES).argmax())

    model = TinySegmenter()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    deadline = time.perf_counter() + minutes * 60
    step = 0
    model.train()
    while time.perf_counter() < deadline:
        index = torch.randint(0, num_train, (8,))
        images, labels = train_images[index], train_labels[index]
        if torch.rand(()) < 0.5:  # horizontal flip
            images, labels = images.flip(-1), labels.flip(-1)
        loss = nn.functional.cross_entropy(model(images), labels, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 100 == 0:
            log(f"step {step} loss {loss.item():.3f}")

    model.eval()
    results = {"steps": step, "majority_class": majority_class}
    for domain in DOMAINS:
        images, labels = to_tensors([generator.sample(i, domain, "validation") for i in range(num_validation)])
        with torch.no_grad():
            predictions = torch.cat([model(images[i : i + 8]).argmax(1) for i in range(0, num_validation, 8)])
        results[domain] = miou(confusion_of(predictions.numpy().ravel(), labels.numpy().ravel()))
        results[f"{domain}_majority"] = miou(
            confusion_of(np.full(labels.numel(), majority_class), labels.numpy().ravel())
        )
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = run(args.minutes)
    print(f"steps: {results['steps']}")
    for domain in DOMAINS:
        print(
            f"{domain:>10}: mIoU {results[domain]:5.1f}   majority-class baseline {results[f'{domain}_majority']:4.1f}"
        )
    margin = results[SOURCE_DOMAIN] - results[f"{SOURCE_DOMAIN}_majority"]
    print(f"source margin over the baseline: {margin:.1f} mIoU points ({'OK' if margin > 10 else 'TOO SMALL'})")
    return 0 if margin > 10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
