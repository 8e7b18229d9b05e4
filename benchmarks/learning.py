"""Proof of learning for the three tasks, one after the other (run by `make bench`; not a test).

- classification: a small CNN on digits, target >= 98% test accuracy;
- detection: FCOS head on resnet18 on shapes, target mAP@0.5 >= 0.6 within 5 minutes on 2 cores;
- segmentation: FPN decoder on shapes, target mIoU >= 0.7 within 5 minutes on 2 cores.

Each task is its own script (run one alone with `.venv/bin/python benchmarks/learning_<task>.py --help`);
this one runs them in fresh processes, so each gets the whole machine, and prints their last lines.
"""
import subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).parent
TASKS = ['classification', 'detection', 'segmentation']

if __name__ == '__main__':
    results = []
    for task in (sys.argv[1:] or TASKS):
        start = time.time()
        r = subprocess.run([sys.executable, str(HERE/f'learning_{task}.py')], capture_output=True, text=True)
        sys.stdout.write(r.stdout); sys.stderr.write(r.stderr[-2000:] if r.returncode else '')
        last = [l for l in r.stdout.splitlines() if l.strip()][-2:] if r.stdout.strip() else ['(no output)']
        results.append((task, r.returncode, time.time() - start, ' | '.join(last)))
    print('\n== proof of learning ==')
    for task, rc, secs, last in results:
        print(f'{task:15s} {"ok" if rc == 0 else f"FAILED rc={rc}"}  {secs:6.0f} s  {last}')
    sys.exit(max(rc for _, rc, _, _ in results))
