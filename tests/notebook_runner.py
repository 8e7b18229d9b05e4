"""Runs notebooks as `nbdev-test` does, each in a fresh process, for tests/test_notebooks.py: `python tests/notebook_runner.py`.

Each notebook runs through nbdev's own `test_nb` (the same cells, flags, directives, cell timeout and error report as
`nbdev-test NB`), in a process of its own, so a notebook never sees the classes another registered; what this adds is
the start of that process. `nbdev-test NB` starts an interpreter and imports torch, torchvision, IPython and
matplotlib again for each of the 56 notebooks: 3-4 s of CPU each, about a fifth of the notebook tests (issue 18). Here
one server imports them once and *forks* a child per notebook: the child starts with those libraries loaded and
nothing else (not core_models: a notebook imports its own module as a kernel does). Nothing has run in the server, so
the child's state is a fresh interpreter's; torch keeps no threads before its first operation, so forking after
`import torch` is safe (and the server is this single thread: a pytest worker, with its threads and the tests it ran,
is never forked). Beside those, the two that many notebooks import and that cost most (measured in a child, issue 18):
matplotlib.pyplot (0.5 s of CPU, every notebook that plots) and scikit-learn's datasets (2 s, the 16 notebooks that
load digits); at fork neither has started a thread or a pool.

One server per pytest worker (tests/test_notebooks.py's `notebook_runner` fixture), one notebook at a time. It reads a
JSON line per notebook on stdin, `{"nb": path, "flags": [...], "log": path}`, and answers one JSON line on stdout,
`{"ok": bool, "cpu": CPU seconds with the processes the notebook started}`; the child's own output
(nbdev's error report) goes to `log`. The child runs torch on OMP_NUM_THREADS threads (one in a pytest-xdist worker,
tests/conftest.py), else on every core, as do the processes a notebook starts. It exits at the end of stdin.
"""
import json, multiprocessing, os, resource, sys
from pathlib import Path


def _cpu_seconds() -> float:
    "CPU seconds (user + system) of this process and of the children it has waited for."
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _run_one(nb:str, force_flags:list, log:str, threads:int, report):
    """In the forked child: nbdev's test_nb on one notebook, its output in `log`, on `threads` torch threads; the exit
    status says whether it passed, `report` (a pipe's end) gets the CPU seconds it took, with the processes it started."""
    cpu0 = _cpu_seconds()  # the fork inherits the server's counts
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1); os.dup2(out, 2); os.close(out)  # stdout is the server's answer pipe: the notebook must not write there
    devnull = os.open(os.devnull, os.O_RDONLY); os.dup2(devnull, 0); os.close(devnull)
    import torch
    torch.set_num_threads(threads)  # (the server's OpenMP read the environment already)
    os.environ['OMP_NUM_THREADS'] = str(threads)  # the processes a notebook starts (a pipeline, a CLI) inherit it
    from nbdev.test import test_nb
    from nbdev.config import get_config
    cfg = get_config()
    skip_flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags or [])
    ok, _ = test_nb(nb, skip_flags=skip_flags, force_flags=force_flags, do_print=True, basepath=cfg.config_path,
                    cell_timeout=cfg.cell_timeout or None)
    report.send(_cpu_seconds() - cpu0)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0 if ok else 1)


def main():
    # the libraries every notebook's process would import anyway (see the docstring); nothing is run
    import torch, torchvision, matplotlib, numpy, PIL.Image, fastcore.test, nbdev.test, nbdev.showdoc, execnb.shell  # noqa: F401
    import matplotlib.pyplot, sklearn.datasets  # noqa: F401
    threads = int(os.environ.get('OMP_NUM_THREADS') or len(os.sched_getaffinity(0)))
    fork = multiprocessing.get_context('fork')
    for line in sys.stdin:
        req = json.loads(line)
        recv, send = fork.Pipe(duplex=False)
        proc = fork.Process(target=_run_one, args=(str(Path(req['nb']).resolve()), req['flags'], req['log'], threads, send))
        proc.start(); send.close(); proc.join()
        cpu = recv.recv() if recv.poll() else None
        recv.close()
        sys.stdout.write(json.dumps({'ok': proc.exitcode == 0, 'cpu': cpu}) + '\n')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
