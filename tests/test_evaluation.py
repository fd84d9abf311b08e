"""Evaluation tests (issue 7): the protocol, per-domain reports, the command line and 2-process evaluation with
summed confusion matrices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_inference import save_tiny_checkpoint, tiny_model

from depthforge_hf import cli
from depthforge_hf.data.synthetic import synthetic_dataset
from depthforge_hf.data.transforms import normalize_image, to_label_array, to_rgb_array
from depthforge_hf.evaluation import (
    EvaluationProtocol,
    evaluate_model,
    load_evaluation_sets,
    predict_label_map,
    read_evaluation,
    scaled_image_sizes,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_sets():
    # 64x128 images: the tiny model's 64-pixel window slides over them (3 windows per image)
    return {domain: synthetic_dataset(domain, "validation", num_samples=3, height=64, width=128, seed=1)
            for domain in ("source", "fog")}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def independent_confusion(model, dataset, num_labels=19):
    """The eval-mode forward of every image (which slides its window itself), counted with numpy."""
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    for example in dataset:
        image, label = to_rgb_array(example["image"]), to_label_array(example["label"]).astype(np.int64)
        with torch.no_grad():
            logits = model(normalize_image(image)[None]).logits
        prediction = logits.argmax(dim=1)[0].numpy()
        keep = label != 255
        np.add.at(matrix, (label[keep], prediction[keep]), 1)
    return matrix


def test_report_matches_an_independent_computation(model, small_sets):
    report = evaluate_model(model, small_sets, mean_domains=["fog"])
    for domain, dataset in small_sets.items():
        expected = independent_confusion(model, dataset)
        assert expected.sum() > 0
        assert np.array_equal(report.domains[domain].confusion.numpy(), expected), domain
        assert report.domains[domain].num_samples == 3
    document = report.to_dict()
    assert document["mean"] == {"domains": ["fog"], "mIoU": document["domains"]["fog"]["mIoU"],
                                "mAcc": document["domains"]["fog"]["mAcc"], "aAcc": document["domains"]["fog"]["aAcc"]}
    source = report.domains["source"].scores
    assert document["domains"]["source"]["mIoU"] == round(source.mean_iou, 2)
    assert report.as_training_results()["mean_mIoU"] == report.domains["fog"].scores.mean_iou
    assert not model.training  # left as it was


def test_official_test_scales():
    # mmcv keep-ratio rescale into the (long, short) box: Cityscapes, BDD100K, ACDC, halved Mapillary
    assert scaled_image_sizes(1024, 2048, (1024, 512), [1.0]) == [(512, 1024)]
    assert scaled_image_sizes(720, 1280, (1280, 720), [1.0]) == [(720, 1280)]
    assert scaled_image_sizes(1080, 1920, (960, 540), [1.0]) == [(540, 960)]
    assert scaled_image_sizes(1500, 2000, (1024, 512), [1.0]) == [(512, 683)]
    # multi-scale: the box scaled (mmseg MultiScaleFlipAug), or the native size scaled without a test scale
    assert scaled_image_sizes(1024, 2048, (1024, 512), [0.5, 1.5]) == [(256, 512), (768, 1536)]
    assert scaled_image_sizes(10, 21, None, [0.5, 1.0]) == [(5, 11), (10, 21)]


def test_test_scale_resizes_the_image_but_scores_at_label_size(model, small_sets):
    example = small_sets["source"][0]
    image, label = to_rgb_array(example["image"]), to_label_array(example["label"])
    calls = []
    original = model.predict_logits

    def recording(pixel_values, **kwargs):
        calls.append(tuple(pixel_values.shape[-2:]))
        return original(pixel_values, **kwargs)

    model.predict_logits = recording
    try:
        prediction = predict_label_map(model, image, label.shape, EvaluationProtocol(), (96, 48), "cpu")
    finally:
        del model.predict_logits
    assert calls == [(48, 96)] and tuple(prediction.shape) == label.shape


def test_flip_augmentation_is_equivariant(model, small_sets):
    """With flip test-time augmentation, the prediction of the mirrored image is the mirrored prediction."""
    image = to_rgb_array(small_sets["fog"][1]["image"])
    protocol = EvaluationProtocol(flip=True)
    prediction = predict_label_map(model, image, image.shape[:2], protocol, None, "cpu")
    mirrored = predict_label_map(model, np.ascontiguousarray(image[:, ::-1]), image.shape[:2], protocol, None, "cpu")
    assert torch.equal(mirrored, prediction.flip(-1))


def test_multi_scale_merges_the_mean_softmax(model, small_sets):
    image = to_rgb_array(small_sets["source"][2]["image"])
    protocol = EvaluationProtocol(scale_factors=(0.5, 1.0))
    merged = predict_label_map(model, image, image.shape[:2], protocol, None, "cpu")
    from PIL import Image

    scores = 0
    for height, width in ((32, 64), (64, 128)):
        resized = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        logits = model.predict_logits(normalize_image(resized)[None])
        logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
        scores = scores + logits.softmax(dim=1)
    assert torch.equal(merged, scores.argmax(dim=1)[0])


def test_bad_samples_are_skipped_and_invalid_labels_counted(model, small_sets):
    import datasets

    rows = [dict(small_sets["source"][index]) for index in range(3)]
    rows[0]["image"] = {"bytes": b"not an image", "path": None}
    label = np.array(to_label_array(rows[1]["label"]))
    label[:4, :4] = 40  # not a class and not 255
    rows[1]["label"] = label
    features = datasets.Features({"image": datasets.Image(decode=False), "label": datasets.Image(decode=False)})
    broken = datasets.Dataset.from_list(
        [{"image": row["image"], "label": row["label"]} for row in rows], features=features
    )
    report = evaluate_model(model, {"broken": broken})
    domain = report.domains["broken"]
    assert (domain.num_samples, domain.skipped_samples, domain.samples_with_invalid_labels) == (2, 1, 1)
    skipping = evaluate_model(model, {"broken": broken}, protocol=EvaluationProtocol(invalid_labels="skip"))
    assert skipping.domains["broken"].num_samples == 1 and skipping.domains["broken"].skipped_samples == 2


def test_report_files_are_written_atomically_with_nan_as_null(model, small_sets, tmp_path):
    report = evaluate_model(model, small_sets)
    paths = report.save(str(tmp_path))
    document = json.loads(open(paths["json"]).read())  # strict JSON: no NaN tokens
    assert document["format"] == "depthforge-evaluation/1"
    absent = [name for name, iou in zip(report.class_names, report.domains["source"].scores.per_class_iou,
                                                  strict=True)
              if np.isnan(iou)]
    assert absent and all(document["domains"]["source"]["per_class"][name]["IoU"] is None for name in absent)
    markdown = open(paths["markdown"]).read()
    assert f"| source | 3 | {document['domains']['source']['mIoU']:.2f} |" in markdown and "n/a" in markdown
    for domain in small_sets:
        with open(tmp_path / f"confusion_{domain}.png", "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    assert read_evaluation(paths["json"]) == document


def test_training_evaluation_json_is_read_as_a_report(model, small_sets):
    results = evaluate_model(model, small_sets).as_training_results()
    training_document = {"evaluation": json.loads(json.dumps(results)), "config": {"train_data": None,
                                                                                   "eval_data": []}}
    converted = read_evaluation(training_document)
    assert converted["domains"]["fog"]["mIoU"] == round(results["fog"]["mIoU"], 2)
    assert converted["domains"]["fog"]["source"] == "depthforge-synthetic"
    assert converted["mean"]["mIoU"] == round(results["mean_mIoU"], 2)


def test_protocol_validation():
    with pytest.raises(ValueError, match="scale_factors"):
        EvaluationProtocol(scale_factors=(0.0,))
    with pytest.raises(ValueError, match="scale"):
        EvaluationProtocol(scale=(1024,))
    with pytest.raises(ValueError, match="synthetic domains"):
        load_evaluation_sets(synthetic_domains=["mars"])
    with pytest.raises(ValueError, match="mean_domains"):
        evaluate_model(tiny_model(), {}, mean_domains=["fog"])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("eval_checkpoint")
    # the official 512 window: the 256x512 synthetic images are one window each (fast)
    save_tiny_checkpoint(directory, inference_window_size=512, inference_stride=341)
    return directory


def test_command_line_on_synthetic_domains(checkpoint, tmp_path):
    output = tmp_path / "out"
    code = cli.main([
        "evaluate", str(checkpoint), "--domains", "source", "snow", "--synthetic-samples", "2", "--seed", "3",
        "--mean-over", "snow", "--output-dir", str(output), "--no-pictures", "--scale", "256", "128",
    ])
    assert code == 0
    document = json.loads((output / "evaluation.json").read_text())
    assert list(document["domains"]) == ["source", "snow"] and document["mean"]["domains"] == ["snow"]
    assert document["domains"]["snow"]["num_samples"] == 2 and document["domains"]["snow"]["scale"] == [256, 128]
    assert document["protocol"]["scale"] == [256, 128] and document["num_processes"] == 1
    assert not list(output.glob("*.png"))
    with pytest.raises(ValueError, match="--mean-over"):
        cli.main(["evaluate", str(checkpoint), "--domains", "source", "--synthetic-samples", "1",
                  "--mean-over", "fog", "--output-dir", str(output)])


def test_two_cpu_processes_sum_confusion_matrices(checkpoint, tmp_path):
    """`accelerate launch` with 2 CPU processes: each evaluates half the images; the summed confusion matrices equal
    a single-process run's, and every image is counted once."""
    arguments = ["--domains", "source", "night", "--synthetic-samples", "3", "--seed", "5", "--no-pictures"]
    assert cli.main(["evaluate", str(checkpoint), *arguments, "--output-dir", str(tmp_path / "one")]) == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        os.path.join(REPO, "scripts", "evaluate.py"), str(checkpoint), *arguments, "--output-dir", str(tmp_path / "two"),
    ]
    environment = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "src"), os.environ.get("PYTHONPATH", "")])}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "evaluation.json").read_text())
    two = json.loads((tmp_path / "two" / "evaluation.json").read_text())
    assert two["num_processes"] == 2
    for domain in ("source", "night"):
        assert two["domains"][domain]["num_samples"] == 3  # 2 + 1 images, none twice
        assert two["domains"][domain]["confusion"] == one["domains"][domain]["confusion"]
        assert two["domains"][domain]["mIoU"] == one["domains"][domain]["mIoU"]
