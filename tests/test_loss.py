"""The training loss against transformers' Mask2FormerLoss / Mask2FormerHungarianMatcher.

`DepthForgeLoss` reorganises transformers' loss for speed (all matching costs first and one host copy, targets read
from the label map instead of per-class masks). The reference below is the plain use of transformers' classes with
mmdet's normaliser (spec/head-equivalence.md §6, verified there against mmdet), called once per prediction in the
official order with the same seed: the two must give the same terms and the same gradients.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_kwargs
from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

from depthforge_hf.modeling import DepthForgeConfig, DepthForgeForSemanticSegmentation
from depthforge_hf.modeling.modeling_depthforge import class_mask_samples, mask2former_component_config


class ReferenceLoss(Mask2FormerLoss):
    """transformers' loss with the official normaliser sum_i max(min(#targets_i, Q), 1)."""

    def __init__(self, config, num_queries):
        super().__init__(config, weight_dict={})
        self.num_queries = num_queries

    def get_num_masks(self, class_labels, device):
        count = sum(max(min(len(classes), self.num_queries), 1) for classes in class_labels)
        return torch.clamp(torch.as_tensor(count, dtype=torch.float, device=device), min=1)


def reference_terms(config, class_logits, mask_logits, labels):
    reference = ReferenceLoss(mask2former_component_config(config), config.num_queries)
    class_labels, mask_labels = [], []
    for label_map in labels:
        present = torch.unique(label_map)
        present = present[present != config.ignore_index]
        class_labels.append(present)
        mask_labels.append((label_map[None] == present[:, None, None]).float())
    terms = []
    for classes, masks in zip(class_logits, mask_logits, strict=True):
        values = reference(masks, classes, mask_labels, class_labels)
        terms.append({"loss_cls": values["loss_cross_entropy"], "loss_mask": values["loss_mask"],
                      "loss_dice": values["loss_dice"]})
    return terms


def blob_labels(batch_size, height, width, classes_per_image, num_labels, generator):
    """Label maps made of coarse random blocks (classes drawn per image), with an ignored band."""
    labels = torch.empty(batch_size, height, width, dtype=torch.long)
    for image, count in enumerate(classes_per_image):
        if count == 0:
            labels[image] = 255
            continue
        palette = torch.randperm(num_labels, generator=generator)[:count]
        grid = torch.randint(0, count, (8, 8), generator=generator)
        grid.view(-1)[:count] = torch.arange(count)  # every drawn class occurs
        block = palette[grid]
        labels[image] = F.interpolate(block[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        labels[image, : height // 6] = 255
    return labels


def predictions(num_predictions, batch_size, num_queries, num_labels, mask_size, generator):
    class_logits = [torch.randn(batch_size, num_queries, num_labels + 1, generator=generator).requires_grad_()
                    for _ in range(num_predictions)]
    mask_logits = [(3 * torch.randn(batch_size, num_queries, *mask_size, generator=generator)).requires_grad_()
                   for _ in range(num_predictions)]
    return class_logits, mask_logits


CASES = {
    # name: (num_queries, classes per image, label size, mask size)
    "typical": (10, [3, 5, 7], (96, 128), (24, 32)),
    "more classes than queries, an unlabelled image": (4, [4, 12, 0], (64, 80), (16, 20)),
    "labels not 4x the masks": (6, [2, 6], (61, 77), (13, 21)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradients_match_transformers_mask2former_loss(case):
    num_queries, classes_per_image, label_size, mask_size = CASES[case]
    config = DepthForgeConfig(**tiny_config_kwargs(num_tokens=num_queries, train_num_points=784))
    model = DepthForgeForSemanticSegmentation(config)
    generator = torch.Generator().manual_seed(0)
    labels = blob_labels(len(classes_per_image), *label_size, classes_per_image, config.num_labels, generator)
    class_logits, mask_logits = predictions(3, len(classes_per_image), num_queries, config.num_labels, mask_size,
                                            generator)

    torch.manual_seed(7)
    ours = model.criterion(class_logits, mask_logits, model.criterion.prepare_targets(labels, len(labels), torch.device("cpu")))
    torch.manual_seed(7)
    expected = reference_terms(config, class_logits, mask_logits, labels)

    for index, (got, want) in enumerate(zip(ours, expected, strict=True)):
        for name in ("loss_cls", "loss_mask", "loss_dice"):
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"prediction {index} {name}")
    leaves = [*class_logits, *mask_logits]
    ours_grad = torch.autograd.grad(sum(sum(t.values()) for t in ours), leaves)
    expected_grad = torch.autograd.grad(sum(sum(t.values()) for t in expected), leaves)
    for got, want in zip(ours_grad, expected_grad, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_a_batch_without_labelled_pixels_gives_zero_mask_terms_with_a_graph():
    config = DepthForgeConfig(**tiny_config_kwargs())
    model = DepthForgeForSemanticSegmentation(config)
    labels = torch.full((2, 32, 32), 255)
    class_logits, mask_logits = predictions(2, 2, config.num_queries, config.num_labels, (8, 8), torch.Generator())
    terms = model.criterion(class_logits, mask_logits, model.criterion.prepare_targets(labels, len(labels), torch.device("cpu")))
    for prediction in terms:
        assert prediction["loss_mask"] == 0 and prediction["loss_dice"] == 0
        assert torch.isfinite(prediction["loss_cls"]) and prediction["loss_cls"] > 0
    sum(sum(t.values()) for t in terms).backward()  # every term is attached to the graph
    assert mask_logits[0].grad is not None and not mask_logits[0].grad.any()


def test_out_of_range_labels_are_refused_before_the_network_runs(monkeypatch):
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).train()

    def must_not_run(*args, **kwargs):
        raise AssertionError("the backbone ran before the labels were checked")

    monkeypatch.setattr(model.depthforge, "forward", must_not_run)
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[0, 0, :3] = torch.tensor([19, 40, -1])
    with pytest.raises(ValueError, match=r"\[-1, 19, 40\] outside the 19 classes.*ignore_index=255"):
        model(torch.randn(1, 3, 64, 64), labels=labels)


def test_class_mask_samples_equal_grid_sample_of_the_class_masks():
    generator = torch.Generator().manual_seed(3)
    num_labels = 5
    labels = torch.randint(0, num_labels, (2, 9, 13), generator=generator)
    labels[0, :2] = 255  # ignored pixels belong to no mask
    points = torch.rand(2, 500, 2, generator=generator)
    points[:, :8] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0],
                                  [0.5, 0.0], [0.0, 0.5], [1.0, 0.5], [0.999, 0.001]])  # borders: zero padding
    class_map = F.pad(torch.where(labels == 255, num_labels, labels), (1, 1, 1, 1), value=num_labels)
    corner_labels, weights = class_mask_samples(class_map, points, torch.arange(2))
    samples = torch.stack([(weights * (corner_labels == k)).sum(-1) for k in range(num_labels)], dim=1)

    masks = (labels[:, None] == torch.arange(num_labels)[None, :, None, None]).float()
    expected = F.grid_sample(masks, 2 * points[:, :, None] - 1, align_corners=False)[..., 0]
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-6)


def test_labels_for_another_number_of_images_are_refused():
    model = DepthForgeForSemanticSegmentation(DepthForgeConfig(**tiny_config_kwargs())).train()
    with pytest.raises(ValueError, match="labels hold 1 maps for 2 images"):
        model(torch.randn(2, 3, 64, 64), labels=torch.zeros(1, 64, 64, dtype=torch.long))


def test_the_step_loss_weights_each_term_of_each_prediction_with_the_configured_weight():
    """compute_loss: the official key names (d0. ... d{L-1}., then the last prediction unprefixed), each term times
    its weight from the config (distinct weights, so a swapped or missing weight shows), and their sum."""
    weights = {"loss_cls": 2.0, "loss_mask": 3.0, "loss_dice": 7.0}
    config = DepthForgeConfig(**tiny_config_kwargs(class_weight=weights["loss_cls"], mask_weight=weights["loss_mask"],
                                                   dice_weight=weights["loss_dice"]))
    model = DepthForgeForSemanticSegmentation(config)
    generator = torch.Generator().manual_seed(0)
    labels = blob_labels(2, 32, 48, [3, 2], config.num_labels, generator)
    class_logits, mask_logits = predictions(3, 2, config.num_queries, config.num_labels, (8, 12), generator)
    targets = model.criterion.prepare_targets(labels, len(labels), torch.device("cpu"))

    torch.manual_seed(3)
    loss, loss_dict = model.compute_loss(class_logits, mask_logits, targets)
    torch.manual_seed(3)
    terms = model.criterion(class_logits, mask_logits, targets)

    expected = {}
    for index, prediction in enumerate(terms):
        prefix = "" if index == len(terms) - 1 else f"d{index}."
        expected.update({prefix + name: value * weights[name] for name, value in prediction.items()})
    assert loss_dict.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(loss_dict[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(loss, sum(expected.values()), rtol=1e-6, atol=0)
