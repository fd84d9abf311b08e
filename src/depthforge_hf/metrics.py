"""Semantic segmentation metrics: a confusion matrix over train ids, and IoU / accuracy derived from it.

Definitions follow mmseg's `IoUMetric` (what the official `DGIoUMetric` reports) and the Cityscapes benchmark:
pixels whose label is `ignore_index` are skipped; per class, IoU = TP / (TP + FP + FN) and accuracy = TP / (TP + FN);
a class absent from both prediction and label has an undefined IoU (NaN) and is left out of the mean; aAcc is the
fraction of labelled pixels predicted correctly. Multi-process evaluation sums confusion matrices (never averages
per-process scores).

`mean_iou` gives the same numbers with the arguments and outputs of `evaluate`'s `mean_iou`, and the `evaluate.Metric`
at `MEAN_IOU_METRIC_PATH` wraps it (`evaluate.load(MEAN_IOU_METRIC_PATH)`, offline).
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


# ----------------------------------------------------------------------------------------------------------------------
# `evaluate`'s `mean_iou`, offline
# ----------------------------------------------------------------------------------------------------------------------

# The `evaluate.Metric` script shipped inside the package: `evaluate.load(MEAN_IOU_METRIC_PATH)` works offline (the Hub
# metric `evaluate.load("mean_iou")` needs the network the first time).
MEAN_IOU_METRIC_PATH = str(Path(__file__).parent / "evaluate_metrics" / "depthforge_mean_iou")


def mean_iou(
    predictions,
    references,
    num_labels: int,
    ignore_index: int,
    nan_to_num: float | None = None,
    label_map: dict[int, int] | None = None,
    reduce_labels: bool = False,
) -> dict:
    """The arguments, outputs and conventions of `evaluate`'s `mean_iou` (fractions, not percentages), computed from
    a confusion matrix summed over all images.

    Per image: `label_map` (old id -> new id, applied to the original labels) then `reduce_labels` (0 -> 255, others
    minus 1) remap the reference; pixels whose reference is `ignore_index` are dropped. Values outside
    [0, num_labels) are counted the way `mean_iou`'s histograms count them: an out-of-range prediction adds to its
    reference class's label area only (a false negative), an out-of-range reference adds to the predicted class's
    prediction area only (a false positive). A class absent from both prediction and reference has IoU NaN, a class
    absent from the reference has accuracy NaN, and the means skip NaN (`nanmean`); `nan_to_num` replaces NaN in the
    returned values afterwards (the means are not recomputed), as `mean_iou` does.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    outside = num_labels  # one extra row/column collects out-of-range values
    matrix = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)
    for prediction, reference in zip(predictions, references, strict=True):
        prediction = np.asarray(prediction).astype(np.int64)
        original = np.asarray(reference).astype(np.int64)
        reference = original.copy()
        for old_id, new_id in (label_map or {}).items():
            reference[original == old_id] = new_id
        if reduce_labels:
            reference[reference == 0] = 255
            reference = reference - 1
            reference[reference == 254] = 255
        valid = reference != ignore_index
        reference = np.where(valid & ((reference < 0) | (reference >= num_labels)), outside, reference)
        prediction = np.where((prediction < 0) | (prediction >= num_labels), outside, prediction)
        # `ignore_index` may itself lie inside the class range (e.g. 0): mark dropped pixels with a value the
        # confusion matrix skips.
        reference = np.where(valid, reference, -1)
        matrix += confusion_matrix(torch.from_numpy(prediction), torch.from_numpy(reference), num_labels + 1, -1)
    intersection = matrix.diag()[:num_labels].double().numpy()
    label_area = matrix[:num_labels, :].sum(dim=1).double().numpy()
    prediction_area = matrix[:, :num_labels].sum(dim=0).double().numpy()
    union = label_area + prediction_area - intersection
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN, as in `mean_iou`
        iou = intersection / union
        accuracy = intersection / label_area
        metrics = {
            "mean_iou": np.nanmean(iou),
            "mean_accuracy": np.nanmean(accuracy),
            "overall_accuracy": intersection.sum() / label_area.sum(),
            "per_category_iou": iou,
            "per_category_accuracy": accuracy,
        }
    if nan_to_num is not None:
        metrics = {name: np.nan_to_num(value, nan=nan_to_num) for name, value in metrics.items()}
    return metrics
