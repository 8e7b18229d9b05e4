"""The kit's CUDA paths, checked on one machine with a GPU in under 5 minutes (run it whenever one is at hand).

    .venv/bin/python benchmarks/gpu_check.py            # every check; exit 0 if all passed, 1 if any failed
    .venv/bin/python benchmarks/gpu_check.py --quick    # smaller models and fewer reps (about a minute)

1. The Trainer on CUDA in fp16 autocast with a GradScaler, and in bf16 (where the GPU has it): a small CNN on
   digits learns (validation accuracy above 0.8, chance 0.1), the loss stays finite, the weights stay fp32.
2. Prediction: `core_models.inference.Predictor` (if present, else the free `evaluate`) in the auto precision
   (`core_models.precision.inference_precision('cuda')`: bf16, or fp16 on older GPUs) against fp32 on the same
   trained model: top-1 agreement and the accuracy delta.
3. DistributedDataParallel over NCCL when there is more than one GPU: `tests/ddp_train.py` under torchrun on two
   GPUs trains like one process (same final weights up to float summation order).
4. The backbone benchmark on the GPU (`benchmarks/backbones.py --device cuda`): ours / torchvision / timm.

Without a GPU it prints one line and exits 0 (nothing to check here); `--require-gpu` makes that exit 3 instead.
`--device cpu` runs the same checks on the CPU (trainer-bf16, prediction in the CPU's auto precision, a small
backbone table; fp16 and DDP over NCCL are CUDA-only and skipped): tests/test_gpu_check.py does that, so the
script keeps up with the kit's API between the rare sessions that have a GPU.
"""
from __future__ import annotations
import argparse, json, os, subprocess, sys, tempfile, time, traceback
from pathlib import Path
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NO_GPU_EXIT = 3  # with --require-gpu


def small_cnn():
    from core_models import create_model
    return create_model('cnn', num_classes=10, in_chans=1, backbone={'name': 'simple_cnn', 'widths': [16, 32, 64]})


def digits():
    from core_models.data import DigitsDataset
    return DigitsDataset('train', size=32), DigitsDataset('val', size=32)


def check_trainer(precision:str, quick:bool, device:str) -> dict:
    from core_models.settings import seed_everything
    from core_models.training import Trainer, TrainConfig
    seed_everything(0)
    model, (train, val) = small_cnn(), digits()
    # 40 steps an epoch: two epochs of 20 steps left BatchNorm's running statistics so far behind that validation sat at
    # chance (0.10) while the training loss fell; after 3 epochs of 40 it reads 0.98 on the CPU in bf16
    cfg = TrainConfig(epochs=3 if quick else 5, batch_size=32, lr=3e-3, precision=precision, channels_last=True,
                      device=device, progress=False)
    t = Trainer(model, train, val, config=cfg)
    t0 = time.perf_counter()
    history = t.fit()
    last = history[-1]
    acc, loss = last.get('val_accuracy'), last.get('train_loss')
    w = next(p for p in t.model.parameters())
    ok = (acc is not None and acc > 0.8 and loss == loss and w.dtype == torch.float32 and w.device.type == device
          and ((t.scaler is not None) == (precision == 'fp16')))
    return {'ok': ok, 'val_accuracy': acc, 'train_loss': loss, 'scaler': t.scaler is not None, 'weights': str(w.dtype),
            'seconds': round(time.perf_counter() - t0, 1), 'model': t.model}


def check_prediction(model, device:str) -> dict:
    from core_models.precision import inference_precision
    from core_models.training import evaluate
    _, val = digits()
    auto = inference_precision(device)
    ref = evaluate(model, val, device=device, precision='fp32')
    fast = evaluate(model, val, device=device, precision=auto)
    out = {'precision': auto, 'accuracy_fp32': ref['accuracy'], f'accuracy_{auto}': fast['accuracy'],
           'accuracy_delta': fast['accuracy'] - ref['accuracy']}
    try:
        from core_models.inference import Predictor
    except ImportError:
        out['predictor'] = 'core_models.inference not present: evaluate only'
    else:
        x = torch.stack([val[i][0] for i in range(256)])
        p32, pa = Predictor(model, device=device, precision='fp32'), Predictor(model, device=device, precision='auto')
        a, b = p32.forward(x), pa.forward(x)
        out['predictor'] = repr(pa)
        out['top1_agreement'] = (a.argmax(1) == b.argmax(1)).float().mean().item()
    out['ok'] = ref['accuracy'] > 0.8 and abs(out['accuracy_delta']) <= 0.01 and out.get('top1_agreement', 1.0) >= 0.98
    return out


def check_ddp(quick:bool) -> dict:
    n = torch.cuda.device_count()
    if n < 2: return {'ok': True, 'skipped': f'{n} GPU: DDP over NCCL needs 2'}
    with tempfile.TemporaryDirectory() as d:
        one, two = Path(d)/'one', Path(d)/'two'
        env = dict(os.environ)  # ddp_train's TrainConfig has device 'auto': CUDA here, one GPU per rank, NCCL
        r1 = subprocess.run([sys.executable, str(ROOT/'tests'/'ddp_train.py'), str(one)], env=env, capture_output=True, text=True, timeout=240)
        r2 = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', str(ROOT/'tests'/'ddp_train.py'), str(two)],
                            env=env, capture_output=True, text=True, timeout=240)
        if r1.returncode or r2.returncode:
            return {'ok': False, 'error': (r1.stderr + r2.stderr)[-1500:]}
        s1, s2 = torch.load(one/'rank0.pt', map_location='cpu'), torch.load(two/'rank0.pt', map_location='cpu')
        diff = max((s1[k].float() - s2[k].float()).abs().max().item() for k in s1)
        world = json.loads((two/'history0.json').read_text())['world_size']
        return {'ok': world == 2 and diff < 1e-3, 'world_size': world, 'max_weight_diff_1_vs_2_gpus': diff, 'backend': 'nccl'}


def check_backbones(quick:bool, device:str) -> dict:
    sys.path.insert(0, str(HERE))
    import backbones
    if device == 'cpu': sizes = ['--batch', '2', '--size', '64', '--reps', '1', '--warmup', '0', '--agree-batch', '4']  # the API, not a speed
    else: sizes = ['--batch', '16' if quick else '32', '--reps', '5' if quick else '10', '--warmup', '3']
    argv = ['--device', device, *sizes, '--modes', 'fp32-fwd,fp32-fwdbwd,fast-fwd,fast-fwdbwd']
    if quick: argv += ['--models', 'resnet50']
    return {'ok': backbones.main(argv) == 0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--quick', action='store_true', help='smaller runs (about a minute)')
    p.add_argument('--require-gpu', action='store_true', help=f'exit {NO_GPU_EXIT} (not 0) when there is no CUDA device')
    p.add_argument('--only', default='trainer-fp16,trainer-bf16,prediction,ddp,backbones', help='comma-separated checks')
    p.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                   help="cpu: the same checks on the CPU (fp16 and DDP skipped), to keep the script in step with the kit")
    a = p.parse_args(argv)
    dev = a.device
    if dev == 'cpu':
        from core_models.precision import inference_precision
        print(f'gpu_check --device cpu: torch {torch.__version__}, {torch.get_num_threads()} threads, auto precision '
              f'{inference_precision("cpu")}: the CUDA checks run on the CPU (what they call, not how fast)', flush=True)
    elif not torch.cuda.is_available():
        print(f'gpu_check: no CUDA device here (torch {torch.__version__} sees none): nothing to check; run it on a machine with a GPU')
        return NO_GPU_EXIT if a.require_gpu else 0
    only = a.only.split(',')
    if dev == 'cuda': print(f'gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}, '
          f'bf16 {torch.cuda.is_bf16_supported()}', flush=True)
    t0, results, trained = time.perf_counter(), {}, None
    cuda_only = lambda: {'ok': True, 'skipped': 'CUDA only'}
    bf16 = dev == 'cpu' or torch.cuda.is_bf16_supported()
    checks = [('trainer-fp16', lambda: check_trainer('fp16', a.quick, dev) if dev == 'cuda' else cuda_only()),
              ('trainer-bf16', lambda: check_trainer('bf16', a.quick, dev) if bf16 else {'ok': True, 'skipped': 'no bf16 on this GPU'}),
              ('prediction', lambda: check_prediction(trained if trained is not None else
                                                      check_trainer('fp16' if dev == 'cuda' else 'fp32', True, dev)['model'], dev)),
              ('ddp', lambda: check_ddp(a.quick) if dev == 'cuda' else cuda_only()), ('backbones', lambda: check_backbones(a.quick, dev))]
    for name, fn in checks:
        if name not in only: continue
        t = time.perf_counter()
        try: r = fn()
        except Exception as e: r = {'ok': False, 'error': f'{type(e).__name__}: {e}', 'trace': traceback.format_exc()[-1500:]}
        if 'model' in r: trained = r.pop('model')
        r['wall_s'] = round(time.perf_counter() - t, 1)
        results[name] = r
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {name}: " + ', '.join(f'{k}={v}' for k, v in r.items() if k not in ('ok', 'trace')), flush=True)
        if 'trace' in r: print(r['trace'])
    failed = [k for k, r in results.items() if not r['ok']]
    print(f'gpu_check: {len(results) - len(failed)}/{len(results)} passed in {time.perf_counter() - t0:.0f} s' + (f'; failed: {failed}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
