"""Predict throughput (images a second) of `core_models.inference.Predictor`: the fast path against fp32, on this machine.

For each model (default resnet50 and vit_b_16, classifiers of 1000 classes, random init with BatchNorm statistics
randomised so an untrained net gives varied logits; no weights are downloaded), two predictors share the model:
`precision='fp32'` and the fast path (`precision='auto'`: bf16 autocast + channels-last where
`core_models.precision.inference_precision` finds native bf16, else fp32; `--fast bf16` forces bf16). Each times
`Predictor.predict` on the same list of `--images` photos (PIL RGB images of mixed sizes around 300x400 px, so the
numbers include the preprocessing a user pays for), the two in turn every repetition, the median of `--reps` after
`--warmup`. Then the agreement on those photos: the share whose top-1 label is the same, and the largest change of the
top-1 probability. One table; a measurement, not a test.

    .venv/bin/python benchmarks/predict.py                            # resnet50, vit_b_16; 32 photos, batches of 16
    .venv/bin/python benchmarks/predict.py --models resnet50 --images 8 --reps 2   # a quick look
"""
from __future__ import annotations
import argparse, os, platform, statistics, time
import numpy as np, torch
from PIL import Image


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', default='resnet50,vit_b_16', help='comma-separated backbone names')
    p.add_argument('--images', type=int, default=32, help='photos predicted per repetition')
    p.add_argument('--batch', type=int, default=16, help="the predictor's batch size")
    p.add_argument('--reps', type=int, default=3, help='timed repetitions (median reported)')
    p.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
    p.add_argument('--fast', default='auto', choices=('auto', 'bf16'), help="the fast path's precision (default auto)")
    p.add_argument('--threads', type=int, default=os.cpu_count(), help='torch.set_num_threads (default: os.cpu_count())')
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    a = p.parse_args(argv)
    a.models = a.models.split(',')
    return a


def photos(n:int, seed:int=0) -> list:
    "`n` RGB photos of mixed sizes: smooth random colour fields with noise (what a resize and a network see as an image)."
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(240, 360)), int(rng.integers(320, 480))
        small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.float32)
        img += rng.normal(0, 12, img.shape)
        out.append(Image.fromarray(img.clip(0, 255).astype(np.uint8)))
    return out


def build(name:str):
    from core_models import create_model
    from core_models.testing import randomize_norms_
    torch.manual_seed(0)
    m = create_model('cnn' if not name.startswith('vit') else 'transformer', backbone=name, head='classifier',
                     config=dict(num_classes=1000))
    return randomize_norms_(m).eval()


def main(argv=None):
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    from core_models.inference import Predictor, Usage, agreement
    from core_models.precision import inference_precision, bf16_native
    images = photos(a.images)
    usage = Usage(task='classification', input_size=224, resize='shorter_crop', crop_pct=0.875,
                  mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), source='benchmark')
    fast_p = inference_precision(a.device, a.fast)
    print(f'# predict throughput: {platform.processor() or platform.machine()}, {a.threads} threads, torch {torch.__version__}, '
          f'native bf16: {bf16_native()}, fast path: {fast_p}; {a.images} photos (~300x400 px) per repetition, batch {a.batch}, '
          f'median of {a.reps}')
    rows = []
    for name in a.models:
        model = build(name)
        twin = build(name); twin.load_state_dict(model.state_dict())  # the same weights; the fast path changes its layout
        preds = {'fp32': Predictor(model, usage, device=a.device, precision='fp32', batch_size=a.batch),
                 'fast': Predictor(twin, usage, device=a.device, precision=fast_p, batch_size=a.batch)}
        ag = agreement(preds['fast'], preds['fp32'], images)
        times = {k: [] for k in preds}
        for r in range(a.warmup + a.reps):
            for k in (list(preds) if r % 2 == 0 else list(preds)[::-1]):  # in turn, the order reversed every other time
                t0 = time.perf_counter(); preds[k].predict(images); dt = time.perf_counter() - t0
                if r >= a.warmup: times[k].append(dt)
        ips = {k: a.images / statistics.median(v) for k, v in times.items()}
        rows.append((name, ips['fp32'], ips['fast'], ips['fast'] / ips['fp32'], ag['top1_agreement'], ag['max_score_diff']))
    print(f"| model | fp32 img/s | fast path ({fast_p}) img/s | speed-up | top-1 agreement | max top-1 prob diff |\n|---|---|---|---|---|---|")
    for n, f32, fst, up, agr, diff in rows:
        print(f'| {n} | {f32:.1f} | {fst:.1f} | {up:.2f}x | {agr:.1%} | {diff:.4f} |')


if __name__ == '__main__':
    main()
