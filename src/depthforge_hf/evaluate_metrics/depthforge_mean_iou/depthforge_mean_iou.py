"""Mean IoU as an `evaluate` metric that loads offline: `evaluate.load(depthforge_hf.metrics.MEAN_IOU_METRIC_PATH)`.

Same arguments, outputs and conventions as `evaluate`'s `mean_iou` (which `evaluate.load("mean_iou")` fetches from the
Hub); the numbers come from `depthforge_hf.metrics.mean_iou`, a confusion matrix over all images.
"""

import datasets
import evaluate

from depthforge_hf.metrics import mean_iou

_DESCRIPTION = """
Intersection over union per class, accumulated over the whole dataset (not averaged per image), and its mean over the
classes present in the prediction or the reference; also per-class accuracy (recall), its mean, and the overall pixel
accuracy. Pixels whose reference is `ignore_index` are left out. This is the Cityscapes benchmark's and mmseg's
`IoUMetric` definition and `evaluate`'s `mean_iou` semantics.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `ndarray` or PIL images): predicted class maps, each (height, width); sizes may differ.
    references (`list` of `ndarray` or PIL images): reference class maps, each the size of its prediction.
    num_labels (`int`): number of classes.
    ignore_index (`int`): reference value that is left out (255 for Cityscapes train ids).
    nan_to_num (`float`, *optional*): replaces NaN in the results (after the means are taken).
    label_map (`dict`, *optional*): old reference id -> new id, applied to the original references.
    reduce_labels (`bool`, *optional*, defaults to `False`): reference 0 -> 255 and every other value minus 1.

Returns:
    mean_iou (`float`), mean_accuracy (`float`), overall_accuracy (`float`): fractions in [0, 1];
    per_category_iou, per_category_accuracy (`ndarray` of shape (num_labels,)): NaN for a class absent from both
    prediction and reference (IoU) or from the reference (accuracy); the means skip NaN.

Example:
    >>> import evaluate, numpy as np
    >>> from depthforge_hf.metrics import MEAN_IOU_METRIC_PATH
    >>> metric = evaluate.load(MEAN_IOU_METRIC_PATH)
    >>> results = metric.compute(predictions=[np.array([[0, 1], [1, 1]])], references=[np.array([[0, 1], [0, 255]])],
    ...                          num_labels=3, ignore_index=255)
    >>> float(results["mean_iou"]), results["per_category_iou"].tolist()  # class 2 absent from both: NaN, skipped
    (0.5, [0.5, 0.5, nan])
"""

_CITATION = """\
@inproceedings{Cordts2016Cityscapes,
  title={The Cityscapes Dataset for Semantic Urban Scene Understanding},
  author={Cordts, Marius and Omran, Mohamed and Ramos, Sebastian and Rehfeld, Timo and Enzweiler, Markus and
          Benenson, Rodrigo and Franke, Uwe and Roth, Stefan and Schiele, Bernt},
  booktitle={Proc. of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}
}
"""


class DepthForgeMeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # As `mean_iou`: maps of any size, stored as images in the metric's cache between `add_batch` calls.
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
            reference_urls=["https://github.com/mcordts/cityscapesScripts"],
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num: float | None = None,
        label_map: dict | None = None,
        reduce_labels: bool = False,
    ):
        return mean_iou(
            predictions,
            references,
            num_labels=num_labels,
            ignore_index=ignore_index,
            nan_to_num=nan_to_num,
            label_map=label_map,
            reduce_labels=reduce_labels,
        )
