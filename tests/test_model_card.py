"""Model card tests (issue 7): licences that follow the most restrictive base model, YAML metadata, and a card whose
`model-index` equals the evaluation report of a model trained by the demo recipe."""

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config_kwargs
from huggingface_hub import ModelCard
from tiny_inference import tiny_model

from depthforge_hf import DepthForgeConfig, cli
from depthforge_hf.evaluation import evaluate_model
from depthforge_hf.model_card import BaseModel, base_models_of, card_license, render_model_card
from depthforge_hf.presets import demo_config

DINOV2_L, DINOV2_S = "facebook/dinov2-large", "facebook/dinov2-small"
DA_V2 = "depth-anything/Depth-Anything-V2-{}-hf"


def front_matter(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("---\n")[1])


def licence_of(**config_kwargs) -> str:
    return card_license(base_models_of(DepthForgeConfig(**tiny_config_kwargs(**config_kwargs))))[0]


@pytest.mark.parametrize(
    ("vfm", "depth", "expected"),
    [
        (DINOV2_L, DA_V2.format("Large"), "cc-by-nc-4.0"),
        (DINOV2_L, DA_V2.format("Base"), "cc-by-nc-4.0"),
        (DINOV2_S, DA_V2.format("Small"), "apache-2.0"),
        (DINOV2_L, "/models/Depth-Anything-V2-Large-hf", "cc-by-nc-4.0"),  # a local copy, known by its folder name
    ],
)
def test_licence_is_the_most_restrictive_base_licence(vfm, depth, expected):
    assert licence_of(vfm_pretrained_id=vfm, depth_pretrained_id=depth) == expected


def test_unknown_or_unrecorded_bases():
    with pytest.warns(UserWarning, match="unknown"):
        assert licence_of(vfm_pretrained_id=DINOV2_L, depth_pretrained_id="someone/my-depth-model") == "other"
    # the demo preset's small random encoders: no pretrained base, the package's licence
    assert card_license(base_models_of(demo_config()))[0] == "apache-2.0"
    # the paper's shapes without recorded ids (e.g. converted official checkpoints): Depth Anything V2-L is assumed
    bases = base_models_of(DepthForgeConfig())
    assert [base.license for base in bases] == ["apache-2.0", "cc-by-nc-4.0"] and "assumed" in bases[1].note
    assert card_license(bases)[0] == "cc-by-nc-4.0"
    # stated explicitly, the bases win
    explicit = [BaseModel("visual foundation model", DINOV2_S, "abc123", "apache-2.0"),
                BaseModel("depth encoder", DA_V2.format("Small"), "def456", "apache-2.0")]
    assert card_license(explicit)[0] == "apache-2.0"


def test_card_metadata_names_base_models_and_licence():
    model = tiny_model()
    model.config.vfm_pretrained_id, model.config.vfm_pretrained_revision = DINOV2_L, "0123abc"
    model.config.depth_pretrained_id = DA_V2.format("Large")
    text = str(render_model_card(model, repo_id="someone/depthforge-test"))
    metadata = front_matter(text)
    assert metadata["license"] == "cc-by-nc-4.0"
    assert metadata["pipeline_tag"] == "image-segmentation" and metadata["library_name"] == "transformers"
    assert metadata["base_model"] == [DINOV2_L, DA_V2.format("Large")]
    assert "model-index" not in metadata  # no evaluation given
    assert "0123abc" in text and "Non-commercial" in text and "arXiv:2504.12753" in text
    assert 'model="someone/depthforge-test", trust_remote_code=True' in text
    breakdown = model.parameter_breakdown()
    trainable = sum(part["trainable"] for part in breakdown.values())
    assert f"**{trainable:,}**" in text


def test_card_of_a_demo_trained_model_quotes_its_evaluation(tmp_path):
    """Train with the demo recipe's loop (tiny model, a few steps), evaluate the saved model on the synthetic target
    domains with `depthforge evaluate`, render the card: its YAML parses and its model-index numbers are the
    evaluation JSON's."""
    from tiny_inference import save_tiny_checkpoint

    from depthforge_hf.training import TrainingConfig, train

    save_tiny_checkpoint(tmp_path / "init", inference_window_size=512, inference_stride=341)
    config = TrainingConfig(
        model=str(tmp_path / "init"), output_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, crop_size=64,
        learning_rate=1e-3, save_every=0, log_every=1, synthetic_train_samples=8, synthetic_eval_samples=1,
        eval_every=0, seed=7, schedule="poly", warmup_ratio=0.5, report_to="none",
    )
    summary = train(config)
    domains = ["realistic", "night", "fog", "snow"]
    assert cli.main(["evaluate", summary["model_dir"], "--domains", *domains, "--synthetic-samples", "1", "--seed", "7",
                     "--output-dir", str(tmp_path / "evaluation"), "--no-pictures"]) == 0
    evaluation_path = tmp_path / "evaluation" / "evaluation.json"
    document = json.loads(evaluation_path.read_text())
    # the same images and model as the training run's own final evaluation: the same numbers
    training_results = json.loads((tmp_path / "run" / "evaluation.json").read_text())["evaluation"]
    for domain in domains:
        assert document["domains"][domain]["mIoU"] == round(training_results[domain]["mIoU"], 2)

    from depthforge_hf.hub import write_model_repo

    folder = write_model_repo(summary["model_dir"], tmp_path / "repo", evaluation=str(evaluation_path),
                              training_config=asdict(config),
                              repo_id="someone/depthforge-demo")
    text = (folder / "README.md").read_text()
    metadata = front_matter(text)
    assert metadata["license"] == "apache-2.0"  # random-initialised demo encoders
    card = ModelCard.load(folder / "README.md")
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    expected = {(domain, metric): document["domains"][domain][metric]
                for domain in domains for metric in ("mIoU", "mAcc", "aAcc")}
    assert results == expected
    assert {r.dataset_type for r in card.data.eval_results} == {"depthforge-synthetic"}
    assert card.data.model_name == "depthforge-demo"
    assert "| steps | 2 |" in text and "synthetic benchmark only" in text
    # the repository's copy is the report itself, except that a local model path is cut to the folder's name
    assert json.loads((folder / "evaluation.json").read_text()) == {**document, "model": "model"}
    assert Path(document["model"]) == Path(summary["model_dir"])


def test_card_from_an_evaluation_report_object():
    from depthforge_hf.data.synthetic import synthetic_dataset

    model = tiny_model()
    sets = {"fog": synthetic_dataset("fog", "validation", num_samples=1, height=64, width=128, seed=0)}
    report = evaluate_model(model, sets, sources={"fog": ("someone/fog-shards", "validation")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the tiny random encoders have a known (the package's) licence
        card = render_model_card(model, report)
    metadata = front_matter(str(card))
    assert metadata["datasets"] == ["someone/fog-shards"]
    entry = metadata["model-index"][0]["results"][0]
    assert entry["dataset"] == {"name": "fog", "type": "someone/fog-shards", "split": "validation"}
    assert entry["metrics"][0] == {"type": "mean_iou", "value": report.to_dict()["domains"]["fog"]["mIoU"],
                                   "name": "mIoU"}
