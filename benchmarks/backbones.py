"""Throughput of the kit's backbones against torchvision's and timm's same architecture, on this machine.

Each model is built three times: torchvision's, ours loaded from torchvision's state_dict (through its family's
key map, so the two compute the same function), and timm's same architecture (its own random init: timing does
not depend on the values; ours' dropout and stochastic depth rates, which timm's defaults leave at 0). Modes:

- `fp32-fwd`: eval, no grad, fp32, NCHW; `fp32-fwdbwd`: train mode, forward + backward, fp32;
- `fast-fwd`: the kit's fast inference path, applied alike to all three: `core_models.precision.fast_layout`
  (channels-last for convolutional models) inside `inference_context(device, 'auto')` (inference mode + bf16
  autocast on CPUs with native bf16 and on CUDA, fp32 elsewhere);
- `fast-fwdbwd` (not by default): forward + backward in channels-last + the same autocast dtype.

The implementations are timed in one process, in turn every repetition (the order reversed every other
repetition), so a noisy machine slows all alike; each number is the median of `--reps` repetitions after
`--warmup`. Then the fast path's agreement with fp32 on a fixed batch (`--agree-batch` images, BatchNorm
statistics randomised so an untrained net gives varied logits): top-1 agreement, max |diff| relative to the
largest logit, and the smallest cosine similarity of the logit vectors. It prints ONE table; it is a
measurement, not a test: nothing here asserts a speed.

    make bench                                                      # batch 8 at 224 px, the three models
    .venv/bin/python benchmarks/backbones.py --size 64 --reps 2     # a quick look
    .venv/bin/python benchmarks/backbones.py --models resnet50 --modes fp32-fwd,fast-fwd --peers torchvision
"""
from __future__ import annotations
import argparse, contextlib, importlib, os, platform, statistics, sys, time
import torch, torch.nn as nn
import torchvision

FAMILIES = ('resnet', 'vit', 'efficient')  # core_models.backbones.<family> registers its models on import
MODES = {  # name: (fast path, backward)
    'fp32-fwd': (False, False), 'fp32-fwdbwd': (False, True),
    'fast-fwd': (True, False), 'fast-fwdbwd': (True, True),
}
DEFAULT_MODES = 'fp32-fwd,fp32-fwdbwd,fast-fwd'
TIMM_NAMES = {'vit_b_16': 'vit_base_patch16_224', 'vit_b_32': 'vit_base_patch32_224', 'vit_l_16': 'vit_large_patch16_224',
              'vit_small_16': 'vit_small_patch16_224', 'vit_tiny_16': 'vit_tiny_patch16_224'}  # else the same name

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='resnet50,efficientnet_b0,vit_b_16', help='comma-separated backbone names')
    p.add_argument('--batch', type=int, default=8, help='images per step')
    p.add_argument('--size', type=int, default=224, help='image side in pixels')
    p.add_argument('--reps', type=int, default=5, help='timed repetitions per implementation (median reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
    p.add_argument('--modes', default=DEFAULT_MODES, help=f'comma-separated, from {", ".join(MODES)}')
    p.add_argument('--peers', default='torchvision,timm', help='comma-separated peers: torchvision, timm')
    p.add_argument('--agree-batch', type=int, default=16, help='images in the fixed batch of the agreement check (0: skip)')
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch.set_num_threads (default: os.cpu_count())')
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    args = p.parse_args(argv)
    args.models, args.modes, args.peers = args.models.split(','), args.modes.split(','), args.peers.split(',')
    if bad := [m for m in args.modes if m not in MODES]: p.error(f'unknown mode(s) {bad}; choose from {list(MODES)}')
    if bad := [m for m in args.peers if m not in ('torchvision', 'timm')]: p.error(f'unknown peer(s) {bad}; choose from torchvision, timm')
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

def build_models(name: str, size: int, peers) -> dict[str, nn.Module]:
    "Ours loaded from torchvision's `name` (random init, BatchNorm statistics randomised), and the peers asked for."
    from core_models.backbones import create_backbone
    from core_models.backbones.base import get_backbone_entry
    from core_models.testing import randomize_norms_
    entry = get_backbone_entry(name)
    vit = entry.family == 'vit' or name.startswith('vit')
    tv = torchvision.models.get_model(entry.torchvision or name, **({'image_size': size} if vit else {}))
    randomise_zeros_(tv); randomize_norms_(tv)
    models = {'ours': create_backbone(name, num_classes=1000, weights=tv.state_dict(), **({'img_size': size} if vit else {}))}
    if 'torchvision' in peers: models['torchvision'] = tv
    if 'timm' in peers:
        try:
            import timm
            # timm's defaults leave out the dropout and stochastic depth that torchvision's (and ours) train with
            # (efficientnet_b0: 0.2 and 0.2): the same architecture in train mode means the same regularisers.
            c = models['ours'].config
            drops = {k: getattr(c, k) for k in ('drop_rate', 'drop_path_rate') if getattr(c, k)}  # nonzero only
            models['timm'] = timm.create_model(TIMM_NAMES.get(name, name), pretrained=False, num_classes=1000,
                                               **drops, **({'img_size': size} if vit else {}))
        except Exception as e: print(f'  {name}: no timm peer ({type(e).__name__}: {e})')
    return models

def make_step(model: nn.Module, x: torch.Tensor, fast: bool, backward: bool, device: torch.device):
    "A function running one timed step of `model` on `x` in the given mode (the model is prepared for it)."
    from core_models.precision import fast_layout, inference_context, inference_precision, precision_dtype
    model.train(backward)
    model.to(memory_format=torch.contiguous_format)
    if fast:
        fast_layout(model)
        if next(model.parameters()).is_contiguous(memory_format=torch.channels_last) or any(
                m.weight.is_contiguous(memory_format=torch.channels_last) and m.weight.ndim == 4 and m.weight.shape[-1] > 1
                for m in model.modules() if isinstance(m, nn.Conv2d)):
            x = x.contiguous(memory_format=torch.channels_last)
    p = inference_precision(device, 'auto') if fast else 'fp32'
    def step():
        if backward:
            model.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=precision_dtype(p), enabled=p != 'fp32'): out = model(x)
            out.float().mean().backward()
        else:
            with inference_context(device, p): model(x)
    return step

def sync(device):
    if device.type == 'cuda': torch.cuda.synchronize()

def time_interleaved(steps: dict, reps: int, warmup: int, device) -> dict[str, float]:
    "Median seconds per step of each of `steps`, taking turns (the order reversed every other repetition)."
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(warmup + reps):
        for k in (names if r % 2 == 0 else names[::-1]):
            sync(device); t = time.perf_counter()
            steps[k](); sync(device)
            if r >= warmup: times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}

def agreement(model: nn.Module, x: torch.Tensor, device) -> dict[str, float]:
    "The fast path's logits against fp32's on `x`: top-1 agreement, max |diff| / max |logit|, min cosine."
    from core_models.precision import fast_layout, inference_context
    model.eval(); model.to(memory_format=torch.contiguous_format)
    with inference_context(device, 'fp32'): ref = model(x).float()
    fast_layout(model)
    with inference_context(device, 'auto') as p: out = model(x).float()
    model.to(memory_format=torch.contiguous_format)
    return {'precision': p, 'top1': (out.argmax(1) == ref.argmax(1)).float().mean().item(),
            'rel': ((out - ref).abs().max() / ref.abs().max()).item(),
            'cos': torch.nn.functional.cosine_similarity(out, ref, dim=1).min().item()}

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
    from core_models.precision import bf16_native, inference_precision
    try: import timm; timm_v = timm.__version__
    except ImportError: timm_v = 'not installed'
    print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm_v}; '
          f'{platform.processor() or platform.machine()} ({torch.backends.cpu.get_cpu_capability()}, bf16_native={bf16_native()}), '
          f'{torch.get_num_threads()} threads, device {device}; batch {args.batch}, {args.size} px, '
          f'median of {args.reps} reps after {args.warmup} warm-up; fast path = {inference_precision(device)} + channels_last (CNNs)')
    for fam, why in missing.items(): print(f'  family {fam!r} not importable: {why}')
    rows, impls = [], ['ours', *args.peers]
    for name in args.models:
        if name not in list_backbones():
            print(f'  {name}: skipped, not registered (its family is missing)'); continue
        models = {k: m.to(device) for k, m in build_models(name, args.size, args.peers).items()}
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        if 'torchvision' in models:
            with torch.no_grad():
                diff = (models['ours'].eval()(x) - models['torchvision'].eval()(x)).abs().max().item()
        agree = None
        if args.agree_batch:
            g = torch.Generator().manual_seed(0)
            agree = agreement(models['ours'], torch.randn(args.agree_batch, 3, args.size, args.size, generator=g).to(device), device)
        for mode in args.modes:
            fast, backward = MODES[mode]
            steps = {k: make_step(m, x, fast, backward, device) for k, m in models.items()}
            ips = {k: args.batch / s for k, s in time_interleaved(steps, args.reps, args.warmup, device).items()}
            row = [name, mode, *(f'{ips[k]:.1f}' if k in ips else '-' for k in impls),
                   *(f'{ips["ours"] / ips[k]:.2f}' if k in ips else '-' for k in impls[1:])]
            row.append(f'{diff:.0e}' if 'torchvision' in models and not fast else '')
            row.append(f"{agree['top1']:.3f} / {agree['rel']:.3f} / {agree['cos']:.4f}" if agree and fast else '')
            rows.append(row)
            print('  ' + ', '.join(f'{k} {v:.1f} img/s' for k, v in ips.items()) + f'  ({name} {mode})', flush=True)
        del models
    header = ['model', 'mode', *(f'{k} img/s' for k in impls), *(f'ours/{k}' for k in impls[1:]),
              'max|ours-tv| fp32', 'fast vs fp32: top-1 / rel|diff| / min cos']
    print()
    print(fmt_table(rows, header))
    print(f'\nfast path: {inference_precision(device)} autocast + channels_last where convolutions dominate '
          f'(core_models.precision); agreement on a fixed batch of {args.agree_batch}. {time.perf_counter() - t0:.0f} s in all')
    return 0 if rows else 1

if __name__ == '__main__':
    sys.exit(main())
