import os, sys, subprocess
from pathlib import Path
import pytest

pytest.register_assert_rewrite('fidelity')  # the shared fidelity checks report both sides when they fail

ROOT = Path(__file__).resolve().parents[1]

# Test modules that train, drive a browser, run DVC pipelines or many subprocesses: `make test` runs them,
# `make test-fast` (pytest -m 'not slow') skips them. A single slow test elsewhere takes @pytest.mark.slow.
SLOW_MODULES = {
    'test_readme.py', 'test_widgets_browser.py', 'test_pipeline.py', 'test_own_data.py', 'test_own_data_pipeline.py',
    'test_finetune.py', 'test_distributed.py', 'test_docs.py', 'test_registry.py', 'test_training.py', 'test_exercises.py',
    'test_seed_examples.py', 'test_tracing.py', 'test_backbones_resnet.py', 'test_backbones_efficient.py',
    'test_backbones_vit.py', 'test_timm_backbones.py', 'test_export.py', 'test_predict.py', 'test_checkpoint.py',
    'test_checkpoint_kills.py', 'test_disk_full.py', 'test_registry_faults.py', 'test_cli.py', 'test_project.py',
}


def pytest_configure(config):
    config.addinivalue_line('markers', "slow: trains, drives a browser, runs pipelines or subprocesses (skipped by make test-fast)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SLOW_MODULES: item.add_marker(pytest.mark.slow)


@pytest.fixture
def run_python(tmp_path):
    "Run `code` in a fresh interpreter of this venv (cwd `tmp_path` unless given); returns the CompletedProcess."
    def run(code, *, env=None, cwd=None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, '-c', code], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=300)
    return run


@pytest.fixture
def one_thread():
    "One torch thread for a test of tiny models (as fast, and no stalls when other jobs share the CPU); the caller's count restored."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
