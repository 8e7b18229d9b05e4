"""Throughput of the kit's backbones against torchvision's, on this machine.

Each model is built twice, torchvision's and ours, with the same weights (ours loads torchvision's
state_dict through its family's key map), and timed forward (eval, no grad) and forward+backward (train
mode), in fp32 and in channels_last + bf16 autocast. The two implementations are timed in one process,
alternating every repetition (and which goes first), so that a noisy machine slows both alike; each number
is the median of `--reps` repetitions after one warm-up. It prints images per second and our/torchvision
ratios. It is a measurement, not a test: nothing here asserts a speed.

    make bench                                          # batch 8 at 224 px, the three default models
    .venv/bin/python benchmarks/backbones.py --size 64 --reps 2   # a quick look
    .venv/bin/python benchmarks/backbones.py --models resnet50 --modes fp32-fwd,bf16cl-fwd
"""
from __future__ import annotations
import argparse, contextlib, importlib, os, platform, statistics, sys, time
import torch, torch.nn as nn
import torchvision

FAMILIES = ('resnet', 'vit', 'efficient')  # core_models.backbones.<family> registers its models on import
MODES = {  # name: (channels_last + bf16 autocast, backward)
    'fp32-fwd': (False, False), 'fp32-fwdbwd': (False, True),
    'bf16cl-fwd': (True, False), 'bf16cl-fwdbwd': (True, True),
}

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='resnet50,vit_b_16,efficientnet_b0', help='comma-separated backbone names')
    p.add_argument('--batch', type=int, default=8, help='images per step')
    p.add_argument('--size', type=int, default=224, help='image side in pixels')
    p.add_argument('--reps', type=int, default=5, help='timed repetitions per implementation (median reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
    p.add_argument('--modes', default=','.join(MODES), help=f'comma-separated, from {", ".join(MODES)}')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch.set_num_threads (default: os.cpu_count())')
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    args = p.parse_args(argv)
    args.models, args.modes = args.models.split(','), args.modes.split(',')
    if bad := [m for m in args.modes if m not in MODES]: p.error(f'unknown mode(s) {bad}; choose from {list(MODES)}')
    return args

def import_families() -> dict[str, str]:
    "Import every backbone family; what could not be imported, with why."
    missing = {}
    for fam in FAMILIES:
        try: importlib.import_module(f'core_models.backbones.{fam}')
        except Exception as e: missing[fam] = f'{type(e).__name__}: {e}'
    return missing

def randomise_zeros_(model: nn.Module):
    "Give zero-initialised weights (e.g. torchvision ViT's heads.head) random values, so outputs can be compared."
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any(): p.normal_(0, 0.02)

def build_pair(name: str, size: int):
    "torchvision's `name` (random init) and ours loaded from its state_dict."
    from core_models.backbones import create_backbone
    from core_models.backbones.base import get_backbone_entry
    entry = get_backbone_entry(name)
    sized = {'image_size': size} if entry.family == 'vit' or name.startswith('vit') else {}
    theirs = torchvision.models.get_model(entry.torchvision or name, **sized)
    randomise_zeros_(theirs)
    ours = create_backbone(name, num_classes=1000, weights=theirs.state_dict(),
                           **({'img_size': size} if sized else {}))
    return ours, theirs

def max_diff(ours, theirs, x) -> float:
    ours.eval(); theirs.eval()
    with torch.no_grad(): return (ours(x) - theirs(x)).abs().max().item()

def make_step(model: nn.Module, x: torch.Tensor, bf16_cl: bool, backward: bool, device: torch.device):
    "A function running one timed step of `model` on `x` in the given mode, and the model prepared for it."
    model.train(backward)
    fmt = torch.channels_last if bf16_cl else torch.contiguous_format
    model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16_cl else contextlib.nullcontext
    def step():
        if backward:
            model.zero_grad(set_to_none=True)
            with autocast(): out = model(x)
            out.float().mean().backward()
        else:
            with torch.no_grad(), autocast(): model(x)
    return step

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()

def time_interleaved(steps: dict, reps: int, warmup: int, device) -> dict[str, float]:
    "Median seconds per step of each of `steps`, alternating them (and their order) every repetition."
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(warmup + reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            sync(device); t = time.perf_counter()
            steps[k](); sync(device)
            if r >= warmup: times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}

def fmt_table(rows, header) -> str:
    cells = [header, *rows]
    w = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    line = lambda c: '  '.join(f'{str(v):<{w[i]}}' if i < 2 else f'{str(v):>{w[i]}}' for i, v in enumerate(c))
    return '\n'.join([line(header), '-' * len(line(header)), *map(line, rows)])

def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    missing = import_families()
    from core_models.backbones import list_backbones
    print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, {platform.processor() or platform.machine()}, '
          f'{torch.get_num_threads()} threads, device {device}; batch {args.batch}, {args.size} px, '
          f'median of {args.reps} reps after {args.warmup} warm-up')
    for fam, why in missing.items(): print(f'  family {fam!r} not importable: {why}')
    rows = []
    for name in args.models:
        if name not in list_backbones():
            print(f'  {name}: skipped, not registered (its family is missing)'); continue
        ours, theirs = build_pair(name, args.size)
        ours, theirs = ours.to(device), theirs.to(device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        diff = max_diff(ours, theirs, x)
        for mode in args.modes:
            bf16_cl, backward = MODES[mode]
            steps = {'ours': make_step(ours, x, bf16_cl, backward, device),
                     'torchvision': make_step(theirs, x, bf16_cl, backward, device)}
            sec = time_interleaved(steps, args.reps, args.warmup, device)
            ips = {k: args.batch / s for k, s in sec.items()}
            rows.append((name, mode, f'{ips["ours"]:.1f}', f'{ips["torchvision"]:.1f}',
                         f'{ips["ours"] / ips["torchvision"]:.2f}', f'{diff:.1e}'))
            print(f'  {name} {mode}: ours {ips["ours"]:.1f} img/s, torchvision {ips["torchvision"]:.1f} img/s', flush=True)
        del ours, theirs
    print()
    print(fmt_table(rows, ('model', 'mode', 'ours img/s', 'torchvision img/s', 'ours/tv', 'max|diff| fp32')))
    print(f'\n{time.perf_counter() - t0:.0f} s in all')
    return 0 if rows else 1

if __name__ == '__main__':
    sys.exit(main())
