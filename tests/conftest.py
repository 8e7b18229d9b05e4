import os, sys, subprocess
from pathlib import Path
import pytest

pytest.register_assert_rewrite('fidelity')  # the shared fidelity checks report both sides when they fail

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_python(tmp_path):
    "Run `code` in a fresh interpreter of this venv (cwd `tmp_path` unless given); returns the CompletedProcess."
    def run(code, *, env=None, cwd=None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run([sys.executable, '-c', code], cwd=cwd or tmp_path, env=full_env,
                              capture_output=True, text=True, timeout=300)
    return run
