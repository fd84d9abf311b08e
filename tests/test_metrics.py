"""mIoU tests (issue 7): the package's confusion-matrix scores, `metrics.mean_iou` and the offline `evaluate.Metric`,
against hand-computed cases and an independent pixel-by-pixel computation of the Cityscapes / `mean_iou` definition."""

import math

import evaluate
import numpy as np
import pytest
import torch

from depthforge_hf.metrics import MEAN_IOU_METRIC_PATH, confusion_matrix, mean_iou, scores_from_confusion

IGNORE = 255


def pixel_by_pixel_reference(predictions, references, num_labels, ignore_index=IGNORE):
    """The definition, counted one pixel at a time in plain Python: per class TP, FP and FN over the pixels whose
    reference is not ignored; IoU = TP / (TP + FP + FN), accuracy = TP / (TP + FN), NaN when the denominator is 0;
    means over the non-NaN classes. A prediction outside the classes is a miss of the reference class only; a
    reference outside the classes (not ignore) is a false positive of the predicted class only (`mean_iou`)."""
    true_positive, false_positive, false_negative = [0] * num_labels, [0] * num_labels, [0] * num_labels
    correct = labelled = 0
    for prediction, reference in zip(predictions, references, strict=True):
        for predicted, label in zip(np.asarray(prediction).ravel().tolist(), np.asarray(reference).ravel().tolist(),
                                    strict=True):
            if label == ignore_index:
                continue
            label_is_class, prediction_is_class = 0 <= label < num_labels, 0 <= predicted < num_labels
            labelled += label_is_class
            if label_is_class and predicted == label:
                true_positive[label] += 1
                correct += 1
                continue
            if label_is_class:
                false_negative[label] += 1
            if prediction_is_class:
                false_positive[predicted] += 1

    def ratio(numerator, denominator):
        return numerator / denominator if denominator else math.nan

    iou = [ratio(t, t + p + n) for t, p, n in zip(true_positive, false_positive, false_negative, strict=True)]
    accuracy = [ratio(t, t + n) for t, n in zip(true_positive, false_negative, strict=True)]
    present_iou = [value for value in iou if not math.isnan(value)]
    present_accuracy = [value for value in accuracy if not math.isnan(value)]
    return {
        "mean_iou": sum(present_iou) / len(present_iou) if present_iou else math.nan,
        "mean_accuracy": sum(present_accuracy) / len(present_accuracy) if present_accuracy else math.nan,
        "overall_accuracy": ratio(correct, labelled),
        "per_category_iou": iou,
        "per_category_accuracy": accuracy,
    }


def assert_same(result: dict, expected: dict, scale: float = 1.0):
    for key in ("mean_iou", "mean_accuracy", "overall_accuracy"):
        np.testing.assert_allclose(result[key], scale * np.float64(expected[key]), rtol=1e-12, equal_nan=True,
                                   err_msg=key)
    for key in ("per_category_iou", "per_category_accuracy"):
        np.testing.assert_allclose(result[key], scale * np.array(expected[key], dtype=np.float64), rtol=1e-12,
                                   equal_nan=True, err_msg=key)


def package_scores(predictions, references, num_labels) -> dict:
    matrix = sum(confusion_matrix(torch.as_tensor(p), torch.as_tensor(r), num_labels, IGNORE)
                 for p, r in zip(predictions, references, strict=True))
    scores = scores_from_confusion(matrix)
    return {"mean_iou": scores.mean_iou, "mean_accuracy": scores.mean_accuracy,
            "overall_accuracy": scores.overall_accuracy, "per_category_iou": scores.per_class_iou,
            "per_category_accuracy": scores.per_class_accuracy}


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(MEAN_IOU_METRIC_PATH)  # a path inside the package: no network


def test_hand_computed_case():
    # class 0: TP 1, FN 1 (-> 1), FP 1 (label 2 -> 0): IoU 1/3; class 1: TP 2, FP 1: IoU 2/3;
    # class 2: FN 1, and the pixel predicted 2 has an ignored label, so no FP: IoU 0.
    label = np.array([[0, 0, 1], [1, 2, IGNORE]])
    prediction = np.array([[0, 1, 1], [1, 0, 2]])
    result = mean_iou([prediction], [label], num_labels=3, ignore_index=IGNORE)
    np.testing.assert_allclose(result["per_category_iou"], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(result["per_category_accuracy"], [1 / 2, 1.0, 0.0])
    assert result["mean_iou"] == pytest.approx(1 / 3)
    assert result["mean_accuracy"] == pytest.approx(0.5)
    assert result["overall_accuracy"] == pytest.approx(3 / 5)
    assert_same(package_scores([prediction], [label], 3), result, scale=100)  # the package reports percentages


def test_classes_absent_from_prediction_and_label_are_left_out_of_the_mean():
    """Convention (Cityscapes, mmseg, `evaluate`'s mean_iou): a class absent from both has IoU NaN and does not count
    in mIoU; a class predicted but absent from the label has IoU 0 and counts (accuracy NaN)."""
    label = np.array([[0, 0], [1, 1]])
    perfect = mean_iou([label], [label], num_labels=4, ignore_index=IGNORE)
    assert np.isnan(perfect["per_category_iou"][2:]).all() and perfect["mean_iou"] == 1.0
    # nan_to_num only rewrites the returned values: the mean is still over the present classes (as in mean_iou)
    zeroed = mean_iou([label], [label], num_labels=4, ignore_index=IGNORE, nan_to_num=0)
    assert zeroed["per_category_iou"].tolist() == [1.0, 1.0, 0.0, 0.0] and zeroed["mean_iou"] == 1.0
    # counting absent classes as 0 would give 0.5 instead: the convention matters
    assert np.mean(zeroed["per_category_iou"]) == 0.5
    # a false positive of class 3 (absent from the label) makes its IoU 0, which counts
    wrong = mean_iou([np.array([[0, 0], [1, 3]])], [label], num_labels=4, ignore_index=IGNORE)
    assert wrong["per_category_iou"][3] == 0.0 and np.isnan(wrong["per_category_accuracy"][3])
    assert wrong["mean_iou"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert_same(package_scores([label], [label], 4), perfect, scale=100)


def test_all_ignore_images_count_for_nothing():
    rng = np.random.RandomState(0)
    prediction, label = rng.randint(0, 5, (6, 7)), rng.randint(0, 5, (6, 7))
    ignored = np.full((4, 4), IGNORE)
    alone = mean_iou([rng.randint(0, 5, (4, 4))], [ignored], num_labels=5, ignore_index=IGNORE)
    assert np.isnan(alone["per_category_iou"]).all() and np.isnan(alone["mean_iou"])
    assert np.isnan(alone["overall_accuracy"])
    scores = scores_from_confusion(confusion_matrix(torch.zeros(4, 4, dtype=torch.long),
                                                    torch.as_tensor(ignored), 5, IGNORE))
    assert math.isnan(scores.mean_iou) and math.isnan(scores.overall_accuracy)
    with_ignored = mean_iou([prediction, rng.randint(0, 5, (4, 4))], [label, ignored], num_labels=5,
                            ignore_index=IGNORE)
    assert_same(with_ignored, mean_iou([prediction], [label], num_labels=5, ignore_index=IGNORE))


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_the_pixel_by_pixel_definition(seed):
    rng = np.random.RandomState(seed)
    num_labels = int(rng.randint(2, 9))
    predictions, references = [], []
    for _ in range(3):  # images of different sizes; some classes never occur
        height, width = rng.randint(1, 12, size=2)
        reference = rng.randint(0, num_labels, (height, width))
        reference[rng.rand(height, width) < 0.2] = IGNORE
        prediction = np.where(rng.rand(height, width) < 0.5, reference, rng.randint(0, num_labels, (height, width)))
        predictions.append(prediction)
        references.append(reference)
    expected = pixel_by_pixel_reference(predictions, references, num_labels)
    assert_same(mean_iou(predictions, references, num_labels=num_labels, ignore_index=IGNORE), expected)
    assert_same(package_scores(predictions, references, num_labels), expected, scale=100)


def test_out_of_range_values_count_like_mean_iou():
    rng = np.random.RandomState(7)
    reference = rng.randint(0, 4, (9, 9))
    reference[0, :3] = [6, 9, IGNORE]  # not classes, and not ignored
    prediction = rng.randint(0, 4, (9, 9))
    prediction[1, :3] = [4, 200, -1]  # predictions outside the classes
    expected = pixel_by_pixel_reference([prediction], [reference], 4)
    assert_same(mean_iou([prediction], [reference], num_labels=4, ignore_index=IGNORE), expected)
    # the strict confusion matrix of the evaluation loop refuses them instead of guessing
    with pytest.raises(ValueError, match="label values"):
        confusion_matrix(torch.as_tensor(prediction.clip(0, 3)), torch.as_tensor(reference), 4, IGNORE)


def test_label_map_and_reduce_labels():
    reference = np.array([[0, 1, 2], [3, 0, 5]])
    prediction = np.array([[0, 0, 1], [2, 1, 1]])
    # reduce_labels: 0 -> ignore, k -> k - 1
    reduced = mean_iou([prediction], [reference], num_labels=3, ignore_index=IGNORE, reduce_labels=True)
    assert_same(reduced, pixel_by_pixel_reference([prediction], [np.array([[IGNORE, 0, 1], [2, IGNORE, 4]])], 3))
    # label_map uses the original ids (5 -> 1 and 1 -> 5 swap, not chain)
    mapped = mean_iou([prediction], [reference], num_labels=6, ignore_index=IGNORE, label_map={5: 1, 1: 5})
    assert_same(mapped, pixel_by_pixel_reference([prediction], [np.array([[0, 5, 2], [3, 0, 1]])], 6))


def test_ignore_index_inside_the_class_range():
    reference = np.array([[0, 1, 2, 0]])
    prediction = np.array([[1, 1, 2, 2]])
    result = mean_iou([prediction], [reference], num_labels=3, ignore_index=0)
    assert_same(result, pixel_by_pixel_reference([prediction], [reference], 3, ignore_index=0))
    assert np.isnan(result["per_category_iou"][0])


def test_evaluate_metric_loads_offline_from_the_package_and_matches(metric):
    assert type(metric).__name__ == "DepthForgeMeanIoU"
    rng = np.random.RandomState(3)
    predictions = [rng.randint(0, 5, (8, 10)) for _ in range(4)]
    references = [np.where(rng.rand(8, 10) < 0.1, IGNORE, rng.randint(0, 5, (8, 10))) for _ in range(4)]
    for prediction, reference in zip(predictions[:2], references[:2], strict=True):  # accumulated over add_batch calls
        metric.add_batch(predictions=[prediction], references=[reference])
    result = metric.compute(predictions=predictions[2:], references=references[2:], num_labels=5, ignore_index=IGNORE)
    assert_same(result, pixel_by_pixel_reference(predictions, references, 5))


def test_evaluate_metric_reproduces_the_mean_iou_documentation_example(metric):
    """The example of `evaluate`'s own `mean_iou` card (its printed results), with the in-package metric."""
    predicted = [np.array([[1, 2], [3, 4], [5, 255]]), np.array([[2, 7], [9, 2], [3, 6]]),
                 np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]])]
    actual = [np.array([[0, 3], [5, 4], [6, 255]]), np.array([[1, 7], [9, 2], [3, 6]]),
              np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]])]
    result = metric.compute(predictions=predicted, references=actual, num_labels=10, ignore_index=255,
                            reduce_labels=False)
    assert result["mean_iou"] == pytest.approx(0.47750000000000004)
    assert result["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert result["overall_accuracy"] == pytest.approx(0.5263157894736842)
    np.testing.assert_allclose(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])
