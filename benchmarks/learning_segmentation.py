"""Proof of learning for segmentation: train a small SegmentationArchitecture on the kit's shapes and report mIoU.

Plain script (no assertions): it prints the loss per epoch, then pixel accuracy, mIoU and per-class IoU on the
held-out `val` split of `ShapesDataset(task='segmentation')` (4 classes: background, circle, square, triangle),
computed with `core_models.metrics.mean_iou`.

    .venv/bin/python benchmarks/learning_segmentation.py                      # simple_cnn, FPN head
    .venv/bin/python benchmarks/learning_segmentation.py --backbone resnet18 --decoder aspp

Target: mIoU >= 0.7 within 5 minutes of wall time on 2 CPU cores.
"""
from __future__ import annotations
import argparse, json, math, time
import torch
from core_models.data import ShapesDataset
from core_models.metrics import mean_iou, pixel_accuracy
from core_models.architectures.segmentation import SegmentationArchitecture

# A simple_cnn with a stride-2 stem and four stages gives strides 4, 8, 16, 32: the semantic FPN's own levels.
BACKBONES = {
    'simple_cnn': {'name': 'simple_cnn', 'widths': (16, 32, 64, 128), 'depths': (1, 1, 2, 2), 'stem_stride': 2},
    'resnet18': {'name': 'resnet18'},
    'efficientnet_b0': {'name': 'efficientnet_b0'},
    'vit_tiny_16': {'name': 'vit_tiny_16', 'depth': 6},
}


def load_split(split, n, size):
    "The whole split as tensors: images (N, 3, size, size) float, masks (N, size, size) int64."
    ds = ShapesDataset(split, n=n, task='segmentation', size=size)
    items = [ds[i] for i in range(len(ds))]
    return (torch.stack([im.as_subclass(torch.Tensor) for im, _ in items]),
            torch.stack([m.as_subclass(torch.Tensor) for _, m in items]))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--backbone', default='simple_cnn', choices=list(BACKBONES))
    p.add_argument('--decoder', default='fpn', choices=['fpn', 'aspp'])
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--n-train', type=int, default=2000)
    p.add_argument('--n-val', type=int, default=300)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--lr', type=float, default=5e-3)
    p.add_argument('--channels', type=int, default=32)
    p.add_argument('--dice-weight', type=float, default=0.5)
    p.add_argument('--bf16', action=argparse.BooleanOptionalAction, default=True, help='bf16 autocast on CPU')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t0 = time.time()

    xtr, ytr = load_split('train', a.n_train, a.size)
    xva, yva = load_split('val', a.n_val, a.size)
    mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
    xtr, xva = (xtr - mean) / std, (xva - mean) / std
    t_data = time.time() - t0
    print(f'data: {len(xtr)} train / {len(xva)} val images of {a.size}px in {t_data:.1f}s; '
          f'pixel share per class {[round(v, 3) for v in (torch.bincount(ytr.flatten(), minlength=4) / ytr.numel()).tolist()]}')

    head = {'num_classes': len(ShapesDataset.classes) + 1, 'decoder': a.decoder, 'channels': a.channels,
            'dice_weight': a.dice_weight, 'aspp_rates': (1, 2, 3)}
    model = SegmentationArchitecture({**head, 'img_size': a.size}, backbone=BACKBONES[a.backbone])
    model = model.to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    steps = a.epochs * math.ceil(len(xtr) / a.batch_size)
    opt = torch.optim.AdamW(model.param_groups(a.lr, weight_decay=0.01))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g['lr'] for g in opt.param_groups], total_steps=steps, pct_start=0.15)
    print(f'model: {a.backbone} + {a.decoder} head, {n_params:,} parameters, levels {model.feature_levels}; '
          f'{a.epochs} epochs x {math.ceil(len(xtr) / a.batch_size)} steps, bf16={a.bf16}, threads={a.threads}')

    for epoch in range(a.epochs):
        model.train()
        perm, total, t_ep = torch.randperm(len(xtr)), 0.0, time.time()
        for i in range(0, len(xtr), a.batch_size):
            idx = perm[i:i + a.batch_size]
            x, y = xtr[idx], ytr[idx]
            flip = torch.rand(len(idx)) < 0.5  # horizontal flips: a shape's class does not change in a mirror
            x, y = torch.where(flip[:, None, None, None], x.flip(-1), x), torch.where(flip[:, None, None], y.flip(-1), y)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.bf16):
                losses = model(x.contiguous(memory_format=torch.channels_last), y)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step(); sched.step()
            total += loss.item() * len(idx)
        print(f'epoch {epoch + 1}: loss {total / len(xtr):.4f} ({time.time() - t_ep:.1f}s)', flush=True)

    model.eval()
    preds = []
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=a.bf16):
        for i in range(0, len(xva), 100):
            preds.append(model(xva[i:i + 100].contiguous(memory_format=torch.channels_last))['labels'])
    preds = torch.cat(preds)
    miou, iou = mean_iou(preds, yva, num_classes=head['num_classes'])
    acc = pixel_accuracy(preds, yva)
    wall = time.time() - t0
    result = dict(backbone=a.backbone, decoder=a.decoder, size=a.size, epochs=a.epochs, val_mIoU=round(miou, 4),
                  val_pixel_acc=round(acc, 4), per_class_iou=dict(zip(['background', *ShapesDataset.classes], [round(v, 4) for v in iou.tolist()])),
                  wall_s=round(wall, 1), data_s=round(t_data, 1))
    print(json.dumps(result, indent=1))
    from core_models.precision import inference_context, inference_precision
    def predict(precision):
        with inference_context('cpu', precision):
            return torch.cat([model(xva[i:i + 100].contiguous(memory_format=torch.channels_last))['labels'] for i in range(0, len(xva), 100)])
    p32, pfast = predict('fp32'), predict('auto')
    m32, mfast = mean_iou(p32, yva, num_classes=head['num_classes'])[0], mean_iou(pfast, yva, num_classes=head['num_classes'])[0]
    print(f"segmentation fast path ({inference_precision('cpu')} + channels_last) vs fp32: val mIoU {mfast:.4f} vs {m32:.4f} "
          f"(delta {mfast - m32:+.4f}), pixels agreeing {(pfast == p32).float().mean().item():.4f}")


if __name__ == '__main__':
    main()
