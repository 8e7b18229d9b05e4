"""benchmarks/gpu_check.py, the check of the kit's CUDA paths (issue 18). Most sessions have no GPU, so the script
would go stale unseen between the rare runs that have one: here it must say in one line that there is nothing to
check, and its checks, run on the CPU with `--device cpu`, must still drive the kit as it is today (the Trainer in
bf16, `evaluate` and `Predictor` in the auto precision against fp32, the backbone table with both peers)."""
import subprocess, sys
from pathlib import Path
import pytest, torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'gpu_check.py'


def gpu_check(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason='a GPU is here: run benchmarks/gpu_check.py itself')
def test_without_a_gpu_it_says_so_in_one_line():
    r = gpu_check()
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('\n') == 1 and 'no CUDA device here' in r.stdout, r.stdout
    r = gpu_check('--require-gpu')
    assert r.returncode == 3 and 'no CUDA device here' in r.stdout, (r.returncode, r.stdout)


@pytest.mark.slow
def test_its_checks_run_on_the_cpu():
    r = gpu_check('--device', 'cpu', '--quick')
    out = r.stdout + r.stderr[-3000:]
    assert r.returncode == 0, out
    for name in ('trainer-bf16', 'prediction', 'backbones'): assert f'ok   {name}: ' in r.stdout, out
    for name in ('trainer-fp16', 'ddp'): assert f'ok   {name}: skipped=CUDA only' in r.stdout, out
    assert 'top1_agreement=' in r.stdout and 'resnet50' in r.stdout and 'ours/timm' in r.stdout, out
    assert 'gpu_check: 5/5 passed' in r.stdout, out
