"""Run by `accelerate launch --num_processes 2` from test_training.py: a few training steps on the synthetic stream,
recording a fingerprint of every training sample this process saw."""

import os
import sys

import numpy as np
from accelerate import PartialState

import depthforge_hf.training as training


def main(output_dir: str, model_dir: str) -> None:
    seen = []
    original = training.epoch_transform

    def recording_transform(config, epoch, rank):
        transform = original(config, epoch, rank)

        def record(image, label):
            seen.append(f"{np.asarray(image).astype(np.int64).sum()}-{np.asarray(label).astype(np.int64).sum()}")
            return transform(image, label)

        return record

    training.epoch_transform = recording_transform
    config = training.TrainingConfig(
        model=model_dir, output_dir=output_dir, max_steps=3, batch_size=2, crop_size=64, learning_rate=1e-3,
        save_every=0, log_every=1, synthetic_train_samples=16, synthetic_eval_samples=2, eval_every=0, seed=7,
        schedule="poly", warmup_ratio=0.34,
    )
    summary = training.train(config)
    state = PartialState()  # after train(): the Accelerator created there set up the process group
    assert state.num_processes == 2, state
    with open(os.path.join(output_dir, f"seen-{state.process_index}.txt"), "w") as handle:
        handle.write("\n".join(seen))
    with open(os.path.join(output_dir, f"losses-{state.process_index}.txt"), "w") as handle:
        handle.write("\n".join(str(record["loss"]) for record in summary["history"]))
    # DDP keeps the replicas identical: every process writes a fingerprint of its final trainable weights
    weights = training.trainable_state(summary["model"])
    fingerprint = sum(float(t.double().abs().sum()) for t in weights.values())
    with open(os.path.join(output_dir, f"weights-{state.process_index}.txt"), "w") as handle:
        handle.write(repr(fingerprint))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
