"""Model cards for DepthForge checkpoints, rendered from the model, a training configuration and an evaluation report
with `huggingface_hub`'s `ModelCard` / `ModelCardData` (template: `model_cards/depthforge_model_card.md`)."""

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .evaluation import SYNTHETIC_SOURCE, read_evaluation
from .presets import PRESETS

TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "depthforge_model_card.md"

# Licences of the foundation models DepthForge is built from, by Hub id (from their model cards). Depth Anything V2
# Base and Large are non-commercial; Small and DINOv2 are Apache-2.0.
BASE_MODEL_LICENSES = {
    **{f"facebook/dinov2-{size}": "apache-2.0" for size in ("small", "base", "large", "giant")},
    **{f"facebook/dinov2-with-registers-{size}": "apache-2.0" for size in ("small", "base", "large", "giant")},
    "depth-anything/Depth-Anything-V2-Small-hf": "apache-2.0",
    "depth-anything/Depth-Anything-V2-Base-hf": "cc-by-nc-4.0",
    "depth-anything/Depth-Anything-V2-Large-hf": "cc-by-nc-4.0",
    "depth-anything/Depth-Anything-V2-Small": "apache-2.0",
    "depth-anything/Depth-Anything-V2-Base": "cc-by-nc-4.0",
    "depth-anything/Depth-Anything-V2-Large": "cc-by-nc-4.0",
    # the encoders of the named presets (EVA02, Prompt Depth Anything, ...), with the licences their Hub cards state
    **{
        encoder.hub_id: encoder.licence.lower()
        for preset in PRESETS.values()
        for encoder in (preset.vfm, preset.depth)
    },
}
# Ordered from permissive to restrictive; a weight derived from several bases carries the most restrictive one.
LICENSE_RESTRICTIVENESS = {
    "apache-2.0": 0, "mit": 0, "bsd-3-clause": 0, "cc-by-4.0": 1, "cc-by-sa-4.0": 2, "cc-by-nc-4.0": 3,
    "cc-by-nc-sa-4.0": 4,
}
# The code of this package; the licence of a model whose weights derive from no pretrained base.
PACKAGE_LICENSE = "apache-2.0"
# Depth Anything V2 encoder sizes (width, depth) -> (name, licence): used when a checkpoint does not record its base
# (e.g. converted from the official code, which uses Depth Anything V2-Large).
DEPTH_ANYTHING_V2_SIZES = {
    (384, 12): ("Depth Anything V2-Small", "apache-2.0"),
    (768, 12): ("Depth Anything V2-Base", "cc-by-nc-4.0"),
    (1024, 24): ("Depth Anything V2-Large", "cc-by-nc-4.0"),
}

DINOV2_SIZES = {
    (384, 12): ("DINOv2-S", "apache-2.0"),
    (768, 12): ("DINOv2-B", "apache-2.0"),
    (1024, 24): ("DINOv2-L", "apache-2.0"),
    (1536, 40): ("DINOv2-g", "apache-2.0"),
}
PRETRAINED_VIT_SIZES = {(384, 12), (768, 12), (1024, 24), (1280, 32), (1536, 40)}

CITATION = """@article{chen2025depthforge,
  title   = {Stronger, Steadier \\& Superior: Geometric Consistency in Depth VFM Forges Domain Generalized Semantic
             Segmentation},
  author  = {Chen, Siyu and Han, Ting and Zhang, Changshe and Luo, Xin and Wu, Meiliu and Cai, Guorong and Su, Jinhe},
  journal = {arXiv preprint arXiv:2504.12753},
  year    = {2025}
}"""


@dataclass
class BaseModel:
    """A pretrained model the frozen encoders come from. `license` None: unknown."""

    role: str
    name: str | None  # Hub id or local folder; None when not recorded
    revision: str | None = None
    license: str | None = None
    note: str = ""

    @property
    def hub_id(self) -> str | None:
        """The name if it is a Hub model id (not a local folder)."""
        if self.name and is_hub_id(self.name):
            return self.name
        return None

    @property
    def display(self) -> str:
        if self.hub_id:
            return f"[{self.hub_id}](https://huggingface.co/{self.hub_id})" + (f" ({self.note})" if self.note else "")
        if self.name:
            return f"local folder `{os.path.basename(os.path.normpath(self.name))}`" + (f" ({self.note})" if self.note else "")
        return self.note or "none (randomly initialised)"

    @property
    def license_display(self) -> str:
        return self.license or "unknown"


def is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", name)) and not os.path.exists(name)


def known_license(name: str) -> str | None:
    """Licence of a base model by Hub id, or by the folder name of a local copy (e.g. `.../Depth-Anything-V2-Large-hf`)."""
    lowered = {key.lower(): value for key, value in BASE_MODEL_LICENSES.items()}
    if name.lower() in lowered:
        return lowered[name.lower()]
    folder = os.path.basename(os.path.normpath(name)).lower()
    matches = {value for key, value in lowered.items() if key.split("/")[-1] == folder}
    return matches.pop() if len(matches) == 1 else None


def base_models_of(config) -> list[BaseModel]:
    """The two frozen encoders' base models from the config (`vfm_pretrained_id`, `depth_pretrained_id` and
    revisions). An encoder without a recorded base is matched by its shape: one shaped like a DINOv2 / Depth Anything
    V2 size is assumed to be that model and carry its licence (official checkpoints converted with `convert-official`
    use DINOv2-L and Depth Anything V2-L); one of another pretrained size has an unknown licence; a small custom one
    (e.g. the `demo` preset) is taken as randomly initialised."""
    bases = []
    for role, name, revision in (
        ("visual foundation model", config.vfm_pretrained_id, config.vfm_pretrained_revision),
        ("depth encoder", config.depth_pretrained_id, config.depth_pretrained_revision),
    ):
        if name:
            bases.append(BaseModel(role, name, revision, known_license(name)))
            continue
        encoder = config.depth_backbone_config if role == "depth encoder" else config.vfm_config
        size = (encoder.hidden_size, encoder.num_hidden_layers)
        known_sizes = DEPTH_ANYTHING_V2_SIZES if role == "depth encoder" else (
            DINOV2_SIZES if encoder.model_type == "dinov2" else {})
        if size in known_sizes:
            label, license_ = known_sizes[size]
            bases.append(BaseModel(role, None, None, license_, f"not recorded; shaped like {label}, assumed"))
        elif size in PRETRAINED_VIT_SIZES:
            bases.append(BaseModel(role, None, None, None, "not recorded; shaped like a pretrained ViT"))
        else:
            bases.append(BaseModel(role, None, None, PACKAGE_LICENSE))
    return bases


def card_license(bases: list[BaseModel]) -> tuple[str, str]:
    """(licence id, explanation): the most restrictive of the bases' licences, or the package's own licence when no
    pretrained base is involved; "other" when a base's licence is unknown."""
    unknown = [base for base in bases if base.license is None]
    if unknown:
        names = ", ".join(base.name or f"{base.role} (not recorded)" for base in unknown)
        warnings.warn(f"The licence of base model(s) {names} is unknown; the card says licence: other. Pass "
                      "base_models=[BaseModel(..., license=...)] to state it.", stacklevel=3)
        return "other", (f"The licence of {names} could not be determined, so the licence of these weights is unknown: "
                         "check the base models' licences before using or sharing them.")
    licenses = [base.license for base in bases]
    most_restrictive = max(licenses, key=lambda name: LICENSE_RESTRICTIVENESS.get(name, len(LICENSE_RESTRICTIVENESS)))
    derived = [f"{base.display}: {base.license}" for base in bases if base.name or base.note]
    if not derived:
        return most_restrictive, ("No pretrained base model is recorded (the encoders were initialised randomly); "
                                  f"the weights carry the licence of the depthforge-hf code, {most_restrictive}.")
    explanation = (f"These weights derive from {', '.join(derived)}; they carry the most restrictive of these "
                   f"licences, {most_restrictive}.")
    if most_restrictive.startswith("cc-by-nc"):
        explanation += " Non-commercial use only."
    return most_restrictive, explanation


def _count(value: int) -> str:
    return f"{value:,}"


def _architecture(config) -> list[tuple[str, str]]:
    vfm, depth = config.vfm_config, config.depth_backbone_config
    return [
        ("visual encoder (frozen)", f"{vfm.model_type}, {vfm.num_hidden_layers} blocks, width {vfm.hidden_size}, "
                                    f"patch {config.patch_size}"),
        ("depth encoder (frozen)", f"Depth Anything encoder, {depth.num_hidden_layers} blocks, width "
                                   f"{depth.hidden_size}"),
        ("depth-aware tokens", f"{config.num_tokens} tokens of rank {config.token_rank} after every visual block"),
        ("pyramid blocks", ", ".join(str(index) for index in config.out_indices)),
        ("head", f"Mask2Former, width {config.feature_size}, {config.encoder_layers} deformable encoder / "
                 f"{config.decoder_layers} masked-attention decoder layers"),
        ("depth refinement decoder", "yes" if config.use_depth_refinement else "no"),
        ("classes", f"{config.num_labels} ({', '.join(config.id2label[i] for i in range(min(config.num_labels, 19)))}"
                    + (", ..." if config.num_labels > 19 else "") + ")"),
    ]


def _preprocessing(processor) -> str:
    size = dict(getattr(processor, "size", None) or {"shortest_edge": 512, "longest_edge": 1024})
    if not getattr(processor, "do_resize", True):
        return "no resize"
    if "shortest_edge" in size and "longest_edge" in size:
        return f"keep-ratio resize to ({size['longest_edge']}, {size['shortest_edge']})"
    return f"resize to {size}"


def _dataset_label(source: str | None, domain: str) -> str:
    if source is None:
        return domain
    if source == SYNTHETIC_SOURCE or is_hub_id(source):
        return source
    return os.path.basename(os.path.normpath(source))


def evaluation_results(document: dict) -> list[EvalResult]:
    """`model-index` entries: mIoU, mAcc and aAcc per evaluated domain, exactly the report's numbers."""
    results = []
    for domain, scores in document["domains"].items():
        source = scores.get("source")
        for metric_type, metric_name in (("mean_iou", "mIoU"), ("mean_accuracy", "mAcc"), ("accuracy", "aAcc")):
            if scores.get(metric_name) is None:
                continue
            results.append(EvalResult(
                task_type="image-segmentation", task_name="Semantic Segmentation",
                dataset_type=_dataset_label(source, domain), dataset_name=domain,
                dataset_config=domain if source == SYNTHETIC_SOURCE else None,
                dataset_split=scores.get("split"), metric_type=metric_type, metric_name=metric_name,
                metric_value=scores[metric_name],
            ))
    return results


def _evaluation_section(document: dict | None) -> tuple[str, str]:
    from .evaluation import report_markdown

    if document is None:
        return "Not evaluated yet (`depthforge evaluate` writes a report that `push_to_hub` puts here).", ""
    protocol = document.get("protocol") or {}
    scale = protocol.get("scale")
    parts = [f"keep-ratio test scale {tuple(scale)}" if scale else "native image size"]
    if protocol.get("inference_mode") or protocol.get("window_size"):
        parts.append(f"inference mode {protocol.get('inference_mode') or 'slide'}"
                     + (f", window {protocol['window_size']}/{protocol.get('stride')}" if protocol.get("window_size") else ""))
    else:
        parts.append("the model's sliding window")
    if protocol.get("flip") or (protocol.get("scale_factors") or [1.0]) != [1.0]:
        parts.append(f"test-time augmentation (scales {protocol.get('scale_factors')}, flip {protocol.get('flip')})")
    synthetic = any(d.get("source") == SYNTHETIC_SOURCE for d in document["domains"].values())
    text = (f"Protocol: {', '.join(parts)}; mIoU over the classes present in the prediction or the label (Cityscapes / "
            "mmseg definition), percentages; the mean is over " + ", ".join(document["mean"]["domains"]) + ".")
    if synthetic:
        text += (" `depthforge-synthetic` is the package's built-in procedural domain-shift benchmark (a clean source "
                 "style and unseen realistic/night/fog/snow styles), not a real dataset.")
    summary = report_markdown(document).split("\n\nPer-class IoU")[0]
    return text, summary


def _training_section(training: dict | None) -> tuple[str, list[tuple[str, str]]]:
    if not training:
        return "No training configuration was given for this card.", []
    data = training.get("train_data") or "the built-in synthetic benchmark (source style)"
    recipe = [("recipe", training.get("recipe")), ("training data", data), ("steps", training.get("max_steps")),
              ("batch size", training.get("batch_size")), ("crop", training.get("crop_size")),
              ("optimiser", f"AdamW, lr {training.get('learning_rate')}, weight decay {training.get('weight_decay')}"),
              ("schedule", f"{training.get('schedule')}, warm-up ratio {training.get('warmup_ratio')}"),
              ("mixed precision", training.get("mixed_precision")), ("seed", training.get("seed"))]
    text = ("Only the depth-aware tokens, the refinement decoder and the Mask2Former head were trained; both encoders "
            "stayed frozen. Official augmentation (multi-scale resize, 0.75 cat-max crop, flip, photometric distortion).")
    return text, [(name, str(value)) for name, value in recipe if value is not None]


def render_model_card(
    model,
    evaluation=None,
    training_config: dict | None = None,
    repo_id: str | None = None,
    base_models: list[BaseModel] | None = None,
    processor=None,
) -> ModelCard:
    """The model card of a `DepthForgeForSemanticSegmentation`.

    evaluation: an `EvaluationReport`, the path of an `evaluation.json` (from `depthforge evaluate` or a training
        run), or its loaded dict; its per-domain mIoU / mAcc / aAcc become `model-index` entries unchanged.
    training_config: the training run's settings (`dataclasses.asdict(TrainingConfig)` or the `config` of a training
        run's `evaluation.json`).
    repo_id: the Hub repository, for the name and the usage snippet.
    base_models: overrides the base models recorded in the config (`vfm_pretrained_id`, ...).
    processor: the repository's image processor, for the preprocessing it describes.
    """
    config = model.config
    bases = base_models if base_models is not None else base_models_of(config)
    license_, license_explanation = card_license(bases)
    document = read_evaluation(evaluation) if evaluation is not None else None
    if training_config is None and isinstance(evaluation, str | os.PathLike):
        training_config = _training_config_beside(evaluation)
    model_name = repo_id.split("/")[-1] if repo_id else "DepthForge"
    datasets = sorted({source for source in
                       [(training_config or {}).get("train_data")]
                       + [d.get("source") for d in (document or {"domains": {}})["domains"].values()]
                       if source and source != SYNTHETIC_SOURCE and is_hub_id(source)})
    card_data = ModelCardData(
        license=license_,
        license_name="unknown" if license_ == "other" else None,
        library_name="transformers",
        pipeline_tag="image-segmentation",
        tags=["depthforge", "semantic-segmentation", "domain-generalization", "image-segmentation", "custom_code"],
        base_model=[base.hub_id for base in bases if base.hub_id] or None,
        datasets=datasets or None,
        metrics=["mean_iou"] if document else None,
        model_name=model_name if document else None,  # only used for the model-index
        eval_results=evaluation_results(document) if document else None,
    )
    breakdown = model.parameter_breakdown()
    totals = {kind: sum(part[kind] for part in breakdown.values()) for kind in ("trainable", "frozen")}
    parameters = [(part, {k: _count(v) for k, v in counts.items()}) for part, counts in breakdown.items()]
    parameters.append(("**total**", {k: f"**{_count(v)}**" for k, v in totals.items()}))
    evaluation_description, evaluation_table = _evaluation_section(document)
    training_description, recipe = _training_section(training_config)
    window = f"{config.inference_window_size}/{config.inference_stride}"
    limitations = [
        "Domain generalization narrows, but does not close, the gap to the training domain: expect lower accuracy on "
        "unseen cities, weather, lighting and sensors, and check the per-domain results above before relying on it.",
        "The classes are fixed by the training labels; anything else is assigned to the closest of them.",
        "Sliding-window inference runs the two ViT encoders once per window: slow and memory-hungry at high resolution.",
    ]
    if license_.startswith("cc-by-nc"):
        limitations.append("Non-commercial licence inherited from the base model(s); the training datasets' terms "
                           "(e.g. Cityscapes, GTAV) may restrict use further.")
    if document and all(d.get("source") == SYNTHETIC_SOURCE for d in document["domains"].values()):
        limitations.append("Evaluated on the synthetic benchmark only: the numbers say nothing about real images.")
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        summary=(f"A DepthForge semantic segmentation model ({config.num_labels} classes) for domain-generalized "
                 "street-scene segmentation, made with the depthforge-hf package (transformers code)."),
        architecture=_architecture(config),
        base_models=bases,
        license_display=license_,
        license_explanation=license_explanation,
        parameters=parameters,
        model_reference=repo_id or "path/to/this/folder",
        preprocessing_description=_preprocessing(processor),
        inference_description=(f"sliding-window inference ({window} window/stride)"
                               if config.inference_mode == "slide" else "whole-image inference"),
        training_description=training_description,
        recipe=recipe,
        evaluation_description=evaluation_description,
        evaluation_table=evaluation_table,
        limitations=limitations,
        citation=CITATION,
    )


def _training_config_beside(evaluation_path) -> dict | None:
    """A training run's `evaluation.json` carries its settings under "config"."""
    import json

    with open(evaluation_path) as handle:
        document = json.load(handle)
    return document.get("config") if isinstance(document.get("config"), dict) else None
