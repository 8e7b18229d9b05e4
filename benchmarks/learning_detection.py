"""Proof of learning for detection: train `DetectionArchitecture` (FCOS head) on the shapes dataset, report mAP.

A plain script, not a test: it prints the losses per epoch and COCO box mAP (at IoU 0.5 and 0.5:0.95) on the
held-out `val` split, with wall times. Defaults: resnet18 from scratch at 64 px, FPN of 64 channels and two
convs per tower, AdamW with a one-cycle schedule, bf16 autocast on the CPU.

    .venv/bin/python benchmarks/learning_detection.py                      # the default run
    .venv/bin/python benchmarks/learning_detection.py --backbone efficientnet_b0 --epochs 8
    .venv/bin/python benchmarks/learning_detection.py --size-ratio 2       # finer level ranges for small objects

Measured (2 shared CPU cores, --threads 1, defaults): val mAP@0.5 0.893, mAP@0.5:0.95 0.721 in 270 s wall
(132 s of CPU); with --size-ratio 2: 0.886 / 0.729 in 263 s.
"""
from __future__ import annotations
import argparse, math, time
import torch
from core_models.data import ShapesDataset
from core_models.metrics import MeanAveragePrecision
from core_models.heads.detector import DetectionHead
from core_models.architectures.detection import DetectionArchitecture

MEAN, STD = 0.5, 0.25  # the shapes images are roughly centred on grey; any fixed normalisation will do


def load_split(split:str, n:int, size:int, seed:int=0):
    "All `n` items of a shapes split, as one normalised (n, 3, size, size) tensor and a list of target dicts."
    ds = ShapesDataset(split, n=n, size=size, seed=seed, task='detection')
    images, targets = [], []
    for i in range(len(ds)):
        im, t = ds[i]
        images.append(im.as_subclass(torch.Tensor))
        targets.append(dict(boxes=t['boxes'].as_subclass(torch.Tensor).float(), labels=t['labels']))
    return (torch.stack(images) - MEAN) / STD, targets, ds.classes


def flip(images, targets, horizontal:bool, vertical:bool):
    "Flip a batch and its boxes (the shapes are symmetric enough for both flips to be label-preserving)."
    H, W = images.shape[-2:]
    out = []
    for t in targets:
        b = t['boxes'].clone()
        if horizontal: b[:, [0, 2]] = W - b[:, [2, 0]]
        if vertical: b[:, [1, 3]] = H - b[:, [3, 1]]
        out.append(dict(boxes=b, labels=t['labels']))
    dims = [d for d, on in ((-1, horizontal), (-2, vertical)) if on]
    return (images.flip(dims) if dims else images), out


@torch.no_grad()
def evaluate(model, images, targets, batch_size:int, bf16:bool):
    model.eval()
    metric = MeanAveragePrecision()
    for i in range(0, len(images), batch_size):
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):  # bf16: the kit's fast path where the CPU has it natively
            preds = model(images[i:i + batch_size].contiguous(memory_format=torch.channels_last))
        preds = [{k: v.float() if v.is_floating_point() else v for k, v in p.items()} for p in preds]
        metric.update(preds, targets[i:i + batch_size])
    return metric.compute()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--backbone', default='resnet18')
    p.add_argument('--size', type=int, default=64, help='image side in pixels')
    p.add_argument('--n-train', type=int, default=2000)
    p.add_argument('--n-val', type=int, default=300)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--fpn-channels', type=int, default=64)
    p.add_argument('--num-convs', type=int, default=2)
    p.add_argument('--in-strides', type=int, nargs='+', default=[8, 16, 32])
    p.add_argument('--extra-levels', action='store_true')
    p.add_argument('--size-ratio', type=float, default=8.0, help="level ranges: max(l,t,r,b) <= ratio * stride (FCOS: 8)")
    p.add_argument('--box-activation', default='relu', choices=['relu', 'exp'])
    p.add_argument('--no-bf16', dest='bf16', action='store_false', help='train in float32 instead of bf16 autocast')
    p.add_argument('--threads', type=int, default=1, help='torch threads; 1 avoids stalls when other jobs share the cores (2 threads on 2 busy cores ran 10x slower)')
    p.add_argument('--max-minutes', type=float, default=None, help='stop training after this many minutes, then evaluate')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.time()

    train_x, train_t, classes = load_split('train', a.n_train, a.size)
    val_x, val_t, _ = load_split('val', a.n_val, a.size)
    t_data = time.time() - t0

    head = DetectionHead(num_classes=len(classes), fpn_channels=a.fpn_channels, num_convs=a.num_convs,
                         in_strides=tuple(a.in_strides), extra_levels=a.extra_levels, size_ratio=a.size_ratio,
                         box_activation=a.box_activation)
    extra = dict(img_size=a.size) if a.backbone.startswith('vit') else {}
    model = DetectionArchitecture(backbone=a.backbone, head=head, **extra).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.param_groups(lr=a.lr, weight_decay=a.weight_decay))
    steps_per_epoch = math.ceil(a.n_train / a.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g['lr'] for g in opt.param_groups],
                                                total_steps=a.epochs * steps_per_epoch, pct_start=0.15)
    print(f'detection on shapes {a.size}px: {a.backbone} + FCOS head (fpn {a.fpn_channels}, {a.num_convs} convs, '
          f'strides {model.head.strides}, ranges {model.head.size_ranges}), {n_params / 1e6:.2f} M params; '
          f'{a.n_train} train / {a.n_val} val images; bf16={a.bf16}, threads={a.threads}; data {t_data:.1f}s', flush=True)

    t_train = time.time()
    stopped = False
    for epoch in range(a.epochs):
        model.train()
        order = torch.randperm(a.n_train)
        sums, n = {}, 0
        for i in range(0, a.n_train, a.batch_size):
            idx = order[i:i + a.batch_size]
            x, t = flip(train_x[idx], [train_t[j] for j in idx.tolist()], *(torch.rand(2) < 0.5).tolist())
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.bf16):
                losses = model(x.contiguous(memory_format=torch.channels_last), t)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step(); sched.step()
            for k, v in losses.items(): sums[k] = sums.get(k, 0.0) + v.item()
            n += 1
            if a.max_minutes and time.time() - t_train > a.max_minutes * 60: stopped = True; break
        print(f'epoch {epoch + 1:2d}  ' + '  '.join(f'{k} {v / n:.3f}' for k, v in sums.items())
              + f'  ({time.time() - t_train:.0f}s)', flush=True)
        if stopped: print(f'stopped after {a.max_minutes} minutes of training'); break
    t_train = time.time() - t_train

    t_eval = time.time()
    r = evaluate(model, val_x, val_t, 64, a.bf16)
    t_eval = time.time() - t_eval
    per_class = ', '.join(f'{classes[c]} {ap:.3f}' for c, ap in zip(r['classes'], r['map_per_class']))
    print(f"val mAP@0.5 {r['map_50']:.3f}  mAP@0.5:0.95 {r['map']:.3f}  mAP@0.75 {r['map_75']:.3f}  AR@100 {r['mar_100']:.3f}"
          f"  (AP .5:.95 per class: {per_class})")
    print(f'wall: data {t_data:.0f}s, train {t_train:.0f}s, eval {t_eval:.0f}s, total {time.time() - t0:.0f}s; '
          f'CPU time of this process {time.process_time():.0f}s (wall >> CPU/threads means the cores were shared)')
    from core_models.precision import inference_precision
    fast_p = inference_precision('cpu')
    r32, rfast = (r, evaluate(model, val_x, val_t, 64, fast_p == 'bf16')) if not a.bf16 else (evaluate(model, val_x, val_t, 64, False), r)
    if fast_p == 'bf16' or a.bf16:
        print(f"detection fast path ({fast_p} + channels_last) vs fp32: val mAP@0.5 {float(rfast['map_50']):.3f} vs {float(r32['map_50']):.3f} "
              f"(delta {float(rfast['map_50'] - r32['map_50']):+.4f}), mAP@0.5:0.95 delta {float(rfast['map'] - r32['map']):+.4f}")
    return r


if __name__ == '__main__':
    main()
