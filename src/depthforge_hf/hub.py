"""Sharing DepthForge on the Hugging Face Hub: a complete repository folder, and its upload as one commit.

`write_model_repo` writes what a model repository holds: full weights in safetensors (float32, or bfloat16 to halve the
size), `config.json` and `preprocessor_config.json` with `auto_map` entries for `AutoConfig`, `AutoModel`,
`AutoModelForSemanticSegmentation` and `AutoImageProcessor`, the three code files that make the folder load with
`trust_remote_code=True` without this package, the model card (`README.md`) and the evaluation report it quotes.
`push_to_hub` writes that folder and uploads exactly it; `upload_folder_to_hub` uploads any prepared folder (an
adapter-only folder too).
"""

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .evaluation import read_evaluation, write_file_atomically

MODEL_CODE_FILES = ("configuration_depthforge.py", "modeling_depthforge.py", "image_processing_depthforge.py")
WEIGHT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
EXPECTED_AUTO_MAP = {
    "AutoConfig": "configuration_depthforge.DepthForgeConfig",
    "AutoModel": "modeling_depthforge.DepthForgeModel",
    "AutoModelForSemanticSegmentation": "modeling_depthforge.DepthForgeForSemanticSegmentation",
}


def _load_model(model, dtype: torch.dtype):
    """A model in `dtype`: loaded from a folder / Hub id, or a converted copy of an in-memory model (the caller's
    model is left as it is)."""
    from .modeling.modeling_depthforge import DepthForgeForSemanticSegmentation

    if isinstance(model, str | os.PathLike):
        return DepthForgeForSemanticSegmentation.from_pretrained(model, dtype=dtype)
    if next(model.parameters()).dtype == dtype:
        return model
    return copy.deepcopy(model).to(dtype)


def _load_processor(model, processor):
    from .modeling.image_processing_depthforge import DepthForgeImageProcessor

    if processor is not None:
        return processor
    if isinstance(model, str | os.PathLike):
        try:
            return DepthForgeImageProcessor.from_pretrained(model)
        except OSError:  # no preprocessor_config.json: the default (official) preprocessing
            pass
    return DepthForgeImageProcessor()


def write_model_repo(
    model,
    folder: str | os.PathLike,
    *,
    evaluation=None,
    training_config: dict | None = None,
    processor=None,
    repo_id: str | None = None,
    base_models=None,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write a complete model repository folder and return its path.

    model: a `DepthForgeForSemanticSegmentation`, or a saved folder / Hub id (its processor is used when it has one).
    evaluation: an `EvaluationReport` or an `evaluation.json` (path or dict) from `depthforge evaluate` or a training
        run; its numbers become the card's `model-index` and it is saved as `evaluation.json`.
    training_config: the training settings for the card (e.g. `dataclasses.asdict(TrainingConfig)`).
    dtype: "float32" (default, full weights as trained) or "bfloat16" / "float16" (half the size).
    The folder is written next to `folder` and renamed into place; an existing `folder` is an error unless
    `overwrite`.
    """
    from .model_card import render_model_card

    if dtype not in WEIGHT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(WEIGHT_DTYPES)}, got {dtype!r}.")
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; choose a new folder or pass overwrite=True.")
    network = _load_model(model, WEIGHT_DTYPES[dtype])
    processor = _load_processor(model, processor)
    document = read_evaluation(evaluation) if evaluation is not None else None

    staging = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        network.save_pretrained(staging)  # safetensors, code files and auto_map (registered by `import depthforge_hf`)
        processor.save_pretrained(staging)
        # the evaluation as given: a training run's evaluation.json also carries the run's settings for the card
        card = render_model_card(network, evaluation, training_config, repo_id=repo_id, base_models=base_models,
                                 processor=processor)
        write_file_atomically(str(staging / "README.md"), str(card))
        if document is not None:
            if document.get("model") and os.path.exists(document["model"]):  # no local paths in a public repository
                document = {**document, "model": os.path.basename(os.path.normpath(document["model"]))}
            write_file_atomically(str(staging / "evaluation.json"), json.dumps(document, indent=2) + "\n")
        check_model_repo(staging)
        if folder.exists():
            previous = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, previous)
            os.replace(staging, folder)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_model_repo(folder: str | os.PathLike) -> None:
    """Raise if a model folder lacks what loading it from the Hub needs (weights, code files, `auto_map`, card)."""
    folder = Path(folder)
    missing = [name for name in ("config.json", "preprocessor_config.json", "README.md", *MODEL_CODE_FILES)
               if not (folder / name).is_file()]
    if not list(folder.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise RuntimeError(f"{folder} lacks {missing}: import depthforge_hf before saving (it registers the classes "
                           "whose code is shipped) and save with save_pretrained.")
    auto_map = json.loads((folder / "config.json").read_text()).get("auto_map") or {}
    processor_map = json.loads((folder / "preprocessor_config.json").read_text()).get("auto_map") or {}
    if any(auto_map.get(key) != value for key, value in EXPECTED_AUTO_MAP.items()) or "AutoImageProcessor" not in processor_map:
        raise RuntimeError(f"{folder}: incomplete auto_map {auto_map} / {processor_map}.")


def folder_fingerprint(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path (what an upload of the folder sends)."""
    folder = Path(folder)
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*")) if path.is_file()
    }


def upload_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    delete_stale_files: bool = True,
    api=None,
):
    """Upload a prepared repository folder as one commit and return the `CommitInfo`.

    The folder must hold a model card (`README.md`) and safetensors weights: a model folder from `write_model_repo`
    or an adapter-only folder (adapter weights + a card naming the pinned base models). The repository is created if
    needed (`private` applies then). With `delete_stale_files` (default) remote files that the folder does not
    contain are deleted in the same commit (`.gitattributes` is kept), so the repository then holds exactly the
    folder: no stale weight shards from an earlier push.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "README.md").is_file() or not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} is not a repository folder: it needs a README.md model card and *.safetensors "
                         "weights (write it with write_model_repo or the adapter helper).")
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", revision=revision,
        commit_message=commit_message or "Upload DepthForge model with depthforge-hf", create_pr=create_pr,
        delete_patterns="*" if delete_stale_files else None,
    )


def push_to_hub(
    model,
    repo_id: str,
    *,
    evaluation=None,
    training_config: dict | None = None,
    processor=None,
    base_models=None,
    dtype: str = "float32",
    folder: str | os.PathLike | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    delete_stale_files: bool = True,
    api=None,
):
    """Write the repository folder with `write_model_repo` (into `folder`, kept and replaced if it exists, or a
    temporary folder) and upload exactly that folder with `upload_folder_to_hub`. Returns the `CommitInfo`.

    From a training script: `push_to_hub("runs/x/model", "me/depthforge-gta", evaluation="runs/x/evaluation.json")`.
    """
    with tempfile.TemporaryDirectory() as temporary:
        target = Path(folder) if folder is not None else Path(temporary) / "repo"
        write_model_repo(model, target, evaluation=evaluation, training_config=training_config, processor=processor,
                         repo_id=repo_id, base_models=base_models, dtype=dtype, overwrite=folder is not None)
        return upload_folder_to_hub(target, repo_id, token=token, private=private, revision=revision,
                                    commit_message=commit_message, create_pr=create_pr,
                                    delete_stale_files=delete_stale_files, api=api)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("model", help="a saved DepthForge folder (e.g. runs/depthforge-demo/model) or Hub id")
    parser.add_argument("--repo-id", help="Hub repository to upload to (e.g. me/depthforge-gta)")
    parser.add_argument("--folder", help="write the repository folder here (kept); without --repo-id nothing is "
                                         "uploaded")
    parser.add_argument("--evaluation", help="evaluation.json from `depthforge evaluate` or a training run")
    parser.add_argument("--training-config", help="the training settings for the card: a training run's "
                                                  "evaluation.json (its \"config\"), or a YAML/JSON of them")
    parser.add_argument("--dtype", choices=sorted(WEIGHT_DTYPES), default="float32", help="weights' dtype")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", help="branch to upload to (created if needed)")
    parser.add_argument("--commit-message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --folder")


def read_training_config(path: str) -> dict:
    import yaml

    with open(path) as handle:
        document = yaml.safe_load(handle)  # JSON is YAML
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold training settings (expected a mapping).")
    return document["config"] if isinstance(document.get("config"), dict) else document


def run(args) -> int:
    training_config = read_training_config(args.training_config) if args.training_config else None
    if not args.repo_id and not args.folder:
        raise ValueError("Give --repo-id (upload), --folder (write the repository folder only), or both.")
    if args.repo_id:
        if args.folder and os.path.exists(args.folder) and not args.overwrite:
            raise FileExistsError(f"{args.folder} exists; pass --overwrite to replace it.")
        commit = push_to_hub(args.model, args.repo_id, evaluation=args.evaluation, training_config=training_config,
                             dtype=args.dtype, folder=args.folder, private=args.private or None,
                             revision=args.revision, commit_message=args.commit_message, create_pr=args.create_pr)
        print(f"uploaded: {getattr(commit, 'commit_url', commit)}")
    else:
        folder = write_model_repo(args.model, args.folder, evaluation=args.evaluation,
                                  training_config=training_config, dtype=args.dtype, overwrite=args.overwrite)
        print(f"written: {folder} ({len(folder_fingerprint(folder))} files)")
    return 0
