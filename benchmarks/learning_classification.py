"""Proof of learning, classification: a small CNN on scikit-learn's digits (32 px) reaches >= 98% test accuracy.

Not a test: it prints what it measured. Run: .venv/bin/python benchmarks/learning_classification.py [--epochs N]
"""
import argparse, os, time
import torch, torch.nn.functional as F
from torch.utils.data import DataLoader
from core_models import create_model
from core_models.data import DigitsDataset, default_transforms
from core_models.settings import seed_everything


def main(epochs=12, batch_size=64, lr=3e-3, backbone='simple_cnn', size=32, threads=None):
    torch.set_num_threads(threads or os.cpu_count())
    seed_everything(0)
    train = DigitsDataset('train', size=size, transform=default_transforms('classification', train=True, flip=False))
    test = DigitsDataset('test', size=size)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True)
    model = create_model('cnn', backbone=backbone, in_chans=1, num_classes=10)
    opt = torch.optim.AdamW(model.param_groups(lr, weight_decay=0.05), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    x_test = torch.stack([test[i][0] for i in range(len(test))])
    y_test = torch.tensor([test[i][1] for i in range(len(test))])
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        model.eval()
        with torch.no_grad(): preds = model(x_test).argmax(1)
        acc = (preds == y_test).float().mean().item()
        print(f'epoch {epoch + 1:2d}  loss {loss.item():.3f}  test accuracy {acc:.4f}  {time.time() - start:5.1f} s', flush=True)
    from core_models.precision import fast_layout, inference_context
    with inference_context('cpu', 'fp32'): ref = model(x_test).argmax(1)
    fast_layout(model)
    with inference_context('cpu', 'auto') as prec: fast = model(x_test.contiguous(memory_format=torch.channels_last)).float().argmax(1)
    fast_acc = (fast == y_test).float().mean().item()
    print(f'classification fast path ({prec} + channels_last) vs fp32: top-1 agreement {(fast == ref).float().mean().item():.4f}, '
          f'test accuracy {fast_acc:.4f} vs {acc:.4f} (delta {fast_acc - acc:+.4f})')
    print(f'classification: {backbone} on digits {size}px, {epochs} epochs: test accuracy {acc:.4f} '
          f'({len(test)} images) in {time.time() - start:.1f} s on {torch.get_num_threads()} threads')
    return acc


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--epochs', type=int, default=12)
    p.add_argument('--backbone', default='simple_cnn')
    p.add_argument('--threads', type=int, default=None)
    a = p.parse_args()
    main(epochs=a.epochs, backbone=a.backbone, threads=a.threads)
