"""Semantic segmentation metrics: a confusion matrix over train ids, and IoU / accuracy derived from it.

Definitions follow mmseg's `IoUMetric` (what the official `DGIoUMetric` reports) and the Cityscapes benchmark:
pixels whose label is `ignore_index` are skipped; per class, IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN);
a class absent from both prediction and label has an undefined IoU (NaN) and is left out of the mean; aAcc is the
fraction of labelled pixels predicted correctly. Multi-process evaluation sums confusion matrices (never averages
per-process scores).
"""

from dataclasses import dataclass

import torch


def confusion_matrix(
    prediction: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """(num_classes x num_classes) int64 counts, rows = label, columns = prediction. Label values outside
    [0, num_classes) other than `ignore_index` are an error."""
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape.")
    label = label.reshape(-1).long()
    prediction = prediction.reshape(-1).long()
    valid = label != ignore_index
    label, prediction = label[valid], prediction[valid]
    if label.numel() and (label.min() < 0 or label.max() >= num_classes):
        raise ValueError(f"label values must lie in [0, {num_classes}) or equal ignore_index={ignore_index}.")
    if prediction.numel() and (prediction.min() < 0 or prediction.max() >= num_classes):
        raise ValueError(f"prediction values must lie in [0, {num_classes}).")
    counts = torch.bincount(label * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


@dataclass
class SegmentationScores:
    """Scores derived from a confusion matrix. Percentages, as mmseg reports them."""

    per_class_iou: list[float]  # NaN where the class is absent from both prediction and label
    per_class_accuracy: list[float]  # NaN where the class is absent from the label
    mean_iou: float
    mean_accuracy: float
    overall_accuracy: float  # aAcc

    def as_dict(self, class_names: list[str] | None = None) -> dict:
        names = class_names or [str(index) for index in range(len(self.per_class_iou))]
        return {
            "mIoU": self.mean_iou,
            "mAcc": self.mean_accuracy,
            "aAcc": self.overall_accuracy,
            "per_class": {
                name: {"IoU": iou, "Acc": acc}
                for name, iou, acc in zip(names, self.per_class_iou, self.per_class_accuracy, strict=True)
            },
        }


def scores_from_confusion(matrix: torch.Tensor) -> SegmentationScores:
    matrix = matrix.double()
    true_positive = matrix.diag()
    label_area = matrix.sum(dim=1)
    prediction_area = matrix.sum(dim=0)
    union = label_area + prediction_area - true_positive
    iou = true_positive / union  # 0/0 -> NaN for classes absent everywhere
    accuracy = true_positive / label_area
    total = label_area.sum()
    overall = (true_positive.sum() / total).item() if total > 0 else float("nan")
    return SegmentationScores(
        per_class_iou=(100 * iou).tolist(),
        per_class_accuracy=(100 * accuracy).tolist(),
        mean_iou=(100 * iou.nanmean()).item(),
        mean_accuracy=(100 * accuracy.nanmean()).item(),
        overall_accuracy=100 * overall,
    )
