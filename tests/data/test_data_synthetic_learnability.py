import importlib.util
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "check_synthetic_learnability.py")


@pytest.mark.slow
def test_tiny_model_beats_majority_baseline_on_source_domain():
    spec = importlib.util.spec_from_file_location("check_synthetic_learnability", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.run(minutes=1.5, num_train=200, num_validation=24, log=lambda message: None)
    assert results["source"] - results["source_majority"] > 10, results
