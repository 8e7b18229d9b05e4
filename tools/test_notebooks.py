"""Run notebooks as `nbdev-test` does, each in a fresh process: `python tools/test_notebooks.py [--flags slow] [-j 2] PATH...`.

`make test` and `make test-fast` use it. Each notebook runs through nbdev's own `test_nb` (the same cells, flags,
directives, cell timeout and error report as `nbdev-test NB`), in a process of its own, so a notebook never sees the
classes another registered; what this adds is the start of that process. `nbdev-test NB` starts an interpreter and
imports torch, torchvision, IPython and matplotlib again for each of the 56 notebooks: 3-4 s of CPU each, about a
fifth of the notebook phase (issue 18). Here one parent imports them once and *forks* a child per notebook: the child
starts with those libraries loaded and nothing else (not core_models: a notebook imports its own module as a kernel
does). Nothing has run in the parent, so the child's state is a fresh interpreter's; torch keeps no threads before
its first operation, so forking after `import torch` is safe. Beside those, the two that many notebooks import and
that cost most (measured in a child, issue 18): matplotlib.pyplot (0.5 s of CPU, every notebook that plots) and
scikit-learn's datasets (2 s, the 16 notebooks that load digits); at fork neither has started a thread or a pool.

PATHs (notebooks or folders) are run in the order given, each notebook once: `make test` names the notebooks that
train first, so the long ones start early and the short ones fill the gaps at the end (two at a time, as before).
Each child runs torch on its share of the cores (cores / JOBS, or OMP_NUM_THREADS when it is set), as do the
processes a notebook starts. At the end it prints the wall and CPU seconds of the slowest notebooks (CPU with the
processes a notebook started). Exit 1, with the failed notebooks named, when any fails.
"""
import argparse, multiprocessing, multiprocessing.connection, os, resource, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def notebooks(paths:list[str]) -> list[Path]:
    "The notebooks under `paths`, in the order given, each once (names starting with `_` and checkpoints left out)."
    seen, out = set(), []
    for p in map(Path, paths):
        if not p.exists(): sys.exit(f'test_notebooks: {p} does not exist (expected a notebook or a folder of them)')
        found = [p] if p.is_file() else sorted(f for f in p.rglob('*.ipynb') if '.ipynb_checkpoints' not in f.parts)
        for f in found:
            f = f.resolve()
            if f.name.startswith('_') or f in seen: continue
            seen.add(f); out.append(f)
    return out


def _cpu_seconds() -> float:
    "CPU seconds (user + system) of this process and of the children it has waited for."
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def _run_one(nb:Path, skip_flags:list, force_flags:list, cell_timeout, threads:int, report):
    """In the forked child: nbdev's test_nb on one notebook, on `threads` torch threads; the exit status says whether it
    passed, `report` (a pipe's end) gets the CPU seconds it took, with the processes it started (a kernel, a pipeline)."""
    cpu0 = _cpu_seconds()  # the fork inherits the parent's counts
    import torch
    torch.set_num_threads(threads)  # the child's share of the cores (the parent's OpenMP read the environment already)
    os.environ['OMP_NUM_THREADS'] = str(threads)  # and the processes a notebook starts (a pipeline, a CLI) inherit it
    from nbdev.test import test_nb
    from nbdev.config import get_config
    ok, _ = test_nb(nb, skip_flags=skip_flags, force_flags=force_flags, do_print=True,
                    basepath=get_config().config_path, cell_timeout=cell_timeout)
    report.send(_cpu_seconds() - cpu0)
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(0 if ok else 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('paths', nargs='+', help='notebooks or folders, run in this order')
    ap.add_argument('--flags', default='', help="space separated test flags to run that are normally skipped (e.g. 'slow')")
    ap.add_argument('-j', '--jobs', type=int, default=2, help='notebooks at a time (default 2)')
    args = ap.parse_args(argv)

    from nbdev.config import get_config
    cfg = get_config()
    skip_flags = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags or [])
    force_flags, cell_timeout = args.flags.split(), (cfg.cell_timeout or None)
    files = notebooks(args.paths)

    # the libraries every notebook's process would import anyway (see the docstring); nothing is run
    import torch, torchvision, matplotlib, numpy, PIL.Image, fastcore.test, nbdev.test, nbdev.showdoc, execnb.shell  # noqa: F401
    import matplotlib.pyplot, sklearn.datasets  # noqa: F401
    # each notebook gets its share of the cores (OMP_NUM_THREADS, when set, wins): two notebooks of two threads each
    # on two cores would have OpenMP's waiting threads spin against each other
    threads = int(os.environ.get('OMP_NUM_THREADS') or max(1, len(os.sched_getaffinity(0)) // args.jobs))
    fork = multiprocessing.get_context('fork')
    pending, running, failed, times, cpu = list(files), {}, [], {}, {}
    start = time.time()
    while pending or running:
        while pending and len(running) < args.jobs:
            nb = pending.pop(0)
            recv, send = fork.Pipe(duplex=False)
            proc = fork.Process(target=_run_one, args=(nb, skip_flags, force_flags, cell_timeout, threads, send), name=nb.name)
            proc.start(); send.close(); running[proc.sentinel] = (proc, nb, time.time(), recv)
        ready = multiprocessing.connection.wait(list(running))
        for s in ready:
            proc, nb, t0, recv = running.pop(s)
            proc.join(); times[nb] = time.time() - t0
            if recv.poll(): cpu[nb] = recv.recv()
            recv.close()
            if proc.exitcode: failed.append(nb)
    rel = lambda f: os.path.relpath(f, Path.cwd())
    print(f'{len(files)} notebooks in {time.time() - start:.0f} s, {args.jobs} at a time, {sum(cpu.values()):.0f} s of CPU; '
          'slowest (wall / CPU s): ' + ', '.join(f'{rel(f)} {t:.0f} / {cpu.get(f, 0):.0f}'
                                                 for f, t in sorted(times.items(), key=lambda o: -o[1])[:10]))
    if failed:
        sys.stderr.write('\nThese notebooks failed:\n\t' + '\n\t'.join(map(rel, failed)) + '\n')
        return 1
    print('Success.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
