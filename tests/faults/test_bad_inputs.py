"""Bad inputs, one table: each case makes one mistake a user makes (a broken settings.ini, a damaged checkpoint, weights of
another model, a box with x2 < x1, a learning rate of 1e9) and says what the kit must answer: the error type, and the words
that name the problem (what was expected, what was given, which file, key, field, image or step).

A case passes when its call raises that error, every word is in the message, and the error was raised by core_models
itself (the innermost frame of the traceback is in the package), not by torch or configparser from deep inside.

To add a case, append `Case(id, make, error, words)` to CASES (or decorate a function with `@case(...)`): `make` gets a fresh
scratch folder. Ids are `area/what`, so `pytest tests/faults -k settings/` runs one area. Run this file with python to print
the tally (tried / clear / unclear / silent) for the issue's note.
"""
import json, math, os, pickle, shutil, sys
from functools import cache
from pathlib import Path
import pytest, torch, torch.nn as nn

from core_models import create_model
from core_models.backbones import create_backbone
from core_models.backbones.base import WeightsError
from core_models.config import ConfigError
from core_models.checks import ShapeError
from core_models.data import DigitsDataset
from core_models.heads import DetectionHead, SegmentationHead
from core_models.architectures import DetectionArchitecture
from core_models.architectures.segmentation import SegmentationArchitecture
from core_models.settings import SettingsError, load_settings, resolve_device, resolve_dtype
from core_models.training import Trainer, TrainConfig, NonFiniteError
from core_models.versioning.checkpoint import (CheckpointError, CheckpointManager, save_checkpoint, load_checkpoint,
                                               sha256_file)

from faultcases import Case, outcome
pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored

CASES: list[Case] = []

def case(id:str, error, *words):
    "Decorator: register `fn(tmp)` as a case."
    def deco(fn): CASES.append(Case(id, fn, error, words)); return fn
    return deco

def add(id:str, make, error, *words): CASES.append(Case(id, make, error, words))


# -- settings.ini -----------------------------------------------------------------------------------------------------

def ini(text:str|bytes, env:dict|None=None):
    "A function that writes `text` as settings.ini in its scratch folder and loads it."
    def make(tmp:Path):
        f = tmp/'settings.ini'
        (f.write_bytes if isinstance(text, bytes) else f.write_text)(text)
        return load_settings(f, env=env or {})
    return make

add('settings/duplicate-key', ini('[core_models]\nseed = 1\nseed = 2\n'), SettingsError, 'settings.ini', 'line 3', '`seed` a second time')
add('settings/duplicate-section', ini('[core_models]\nseed = 1\n[core_models]\n'), SettingsError, 'line 3', '[core_models] a second time')
add('settings/not-key-value', ini('[core_models]\nseed 7\n'), SettingsError, 'settings.ini', 'line 2', 'expected `key = value`', "'seed 7'")
add('settings/no-section-header', ini('seed = 7\n'), SettingsError, 'line 1', 'expected a section header such as [core_models]')
add('settings/interpolation-missing', ini('[core_models]\ndata_path = %(base)s/data\n'), SettingsError,
    'line 2', '`data_path` refers to %(base)s', 'no key `base`')
add('settings/interpolation-lone-percent', ini('[core_models]\ncheckpoint_path = /mnt/100%\n'), SettingsError,
    '`checkpoint_path` expected %% for a literal %', "'/mnt/100%'")
add('settings/binary-png', ini(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR'), SettingsError, 'settings.ini', 'line 1', 'expected UTF-8 text', '0x89')
add('settings/nul-byte', ini(b'[core_models]\nseed = 1\x00\n'), SettingsError, 'line 2', 'NUL byte')
add('settings/utf16', ini('[core_models]\nseed = 1\n'.encode('utf-16')), SettingsError, 'expected UTF-8 text', '0xff')
add('settings/unknown-key', ini('[core_models]\nchekpoint_path = ckpt\n'), SettingsError, 'unknown key `chekpoint_path`', 'line 2', 'checkpoint_path')
add('settings/seed-not-int', ini('[core_models]\nseed = seven\n'), SettingsError, '`seed`', 'an integer', "'seven'")
add('settings/workers-negative', ini('[core_models]\nnum_workers = -2\n'), SettingsError, '`num_workers`', '>= 0', "'-2'")
add('settings/device-unknown', ini('[core_models]\ndevice = gpu\n'), SettingsError, '`device`', 'cuda:N', "'gpu'")
add('settings/precision-unknown', ini('[core_models]\nprecision = half\n'), SettingsError, '`precision`', 'fp32, bf16, fp16', "'half'")
add('settings/env-override-bad', ini('[core_models]\nseed = 1\n', env={'CORE_MODELS_SEED': 'x'}), SettingsError, '$CORE_MODELS_SEED', "'x'")
add('settings/no-section', ini('[other]\nseed = 1\n'), SettingsError, 'has no [core_models] section')
add('settings/path-is-folder', lambda tmp: load_settings(tmp, env={}), SettingsError, 'expected a settings.ini file, got the folder')
add('settings/file-missing', lambda tmp: load_settings(tmp/'nope.ini', env={}), SettingsError, 'nope.ini', 'does not exist')
add('settings/resolve-device', lambda tmp: resolve_device('tpu'), SettingsError, '`device`', "'tpu'")
add('settings/resolve-dtype', lambda tmp: resolve_dtype('fp8'), SettingsError, '`precision`', "'fp8'")


# -- checkpoints ------------------------------------------------------------------------------------------------------

def tiny_net() -> nn.Module: return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 3))

@cache
def small_model() -> nn.Module:
    torch.manual_seed(0)
    return tiny_net()

def saved(tmp:Path, **kw) -> Path:
    "A fresh checkpoint of `small_model()` (with an AdamW state) at tmp/ck."
    m = small_model()
    opt = torch.optim.AdamW(m.parameters())
    return save_checkpoint(m, opt, 1, {'val_loss': 0.5}, tmp/'ck', **kw)

def edit_meta(folder:Path, edit):
    m = json.loads((folder/'meta.json').read_text()); edit(m); (folder/'meta.json').write_text(json.dumps(m))

def redigest(folder:Path, name:str):
    "Make meta.json's digest of `name` match its (tampered) bytes, so only the file's format can stop it."
    digest, size = sha256_file(folder/name)
    edit_meta(folder, lambda m: m['files'].update({name: {'sha256': digest, 'size': size}}))

def flip_byte(f:Path, offset:int=-5):
    b = bytearray(f.read_bytes()); b[offset] ^= 0xFF; f.write_bytes(bytes(b))

@case('checkpoint/no-meta', CheckpointError, 'has no meta.json')
def _(tmp):
    p = saved(tmp); (p/'meta.json').unlink(); return load_checkpoint(p)

@case('checkpoint/meta-not-json', CheckpointError, "meta.json' is not valid JSON")
def _(tmp):
    p = saved(tmp); (p/'meta.json').write_text('{"format": "core_models.checkpoint", '); return load_checkpoint(p)

@case('checkpoint/meta-binary', CheckpointError, "meta.json' is not valid JSON")
def _(tmp):
    p = saved(tmp); (p/'meta.json').write_bytes(b'\xff\xfe\x00garbage'); return load_checkpoint(p)

@case('checkpoint/meta-without-sha256', CheckpointError, 'files.model.safetensors expected {"sha256"')
def _(tmp):
    p = saved(tmp); edit_meta(p, lambda m: m['files']['model.safetensors'].pop('sha256')); return load_checkpoint(p)

@case('checkpoint/format-version-text', CheckpointError, '`format_version` expected an integer', "'1'")
def _(tmp):
    p = saved(tmp); edit_meta(p, lambda m: m.update(format_version='1')); return load_checkpoint(p)

@case('checkpoint/format-version-newer', CheckpointError, 'newer core_models', 'format version 99')
def _(tmp):
    p = saved(tmp); edit_meta(p, lambda m: m.update(format_version=99)); return load_checkpoint(p)

@case('checkpoint/weights-flipped-byte', CheckpointError, "model.safetensors' is corrupt or was changed after saving", 'expected sha256')
def _(tmp):
    p = saved(tmp); flip_byte(p/'model.safetensors'); return load_checkpoint(p)

@case('checkpoint/state-truncated', CheckpointError, "training_state.pt' is corrupt")
def _(tmp):
    p = saved(tmp); f = p/'training_state.pt'; f.write_bytes(f.read_bytes()[:100])
    return load_checkpoint(p, small_model(), torch.optim.AdamW(small_model().parameters()))

@case('checkpoint/safetensors-absurd-header', CheckpointError, "model.safetensors' is not a valid safetensors file")
def _(tmp):
    p = saved(tmp); (p/'model.safetensors').write_bytes((2**62).to_bytes(8, 'little') + b'{}'); redigest(p, 'model.safetensors')
    return load_checkpoint(p)

@case('checkpoint/safetensors-garbage', CheckpointError, "model.safetensors' is not a valid safetensors file")
def _(tmp):
    p = saved(tmp); (p/'model.safetensors').write_bytes(os.urandom(64)); redigest(p, 'model.safetensors'); return load_checkpoint(p)

class _Payload:
    def __reduce__(self): return (os.system, ('touch pwned',))

@case('checkpoint/pickle-payload', CheckpointError, "training_state.pt' holds objects that weights_only loading refuses", 'nothing was executed')
def _(tmp):
    p = saved(tmp); (p/'training_state.pt').write_bytes(pickle.dumps({'optimizer': _Payload()}, protocol=2)); redigest(p, 'training_state.pt')
    try: return load_checkpoint(p, small_model(), torch.optim.AdamW(small_model().parameters()))
    finally: assert not (Path.cwd()/'pwned').exists() and not (tmp/'pwned').exists()

@case('checkpoint/other-architecture', CheckpointError, "model.safetensors' does not match Sequential", 'missing', 'unexpected')
def _(tmp): return load_checkpoint(saved(tmp), nn.Sequential(nn.Linear(4, 4)))

@case('checkpoint/other-shapes', CheckpointError, 'shapes differ from Sequential', '0.weight: checkpoint (4, 1, 3, 3), model (8, 1, 3, 3)')
def _(tmp): return load_checkpoint(saved(tmp), nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(144, 3)))

@case('checkpoint/no-optimizer-state', CheckpointError, 'holds no optimizer state', 'AdamW')
def _(tmp):
    p = save_checkpoint(small_model(), None, 1, {}, tmp/'ck')
    return load_checkpoint(p, small_model(), torch.optim.AdamW(small_model().parameters()))

add('checkpoint/missing-folder', lambda tmp: load_checkpoint(tmp/'nothing'), CheckpointError, 'no checkpoint at', 'nothing')

@case('checkpoint/replace-non-checkpoint', CheckpointError, 'exists and is not a checkpoint folder; refusing to replace it')
def _(tmp):
    (tmp/'data').mkdir(); (tmp/'data'/'precious.csv').write_text('a,b\n')
    try: return save_checkpoint(small_model(), path=tmp/'data')
    finally: assert (tmp/'data'/'precious.csv').read_text() == 'a,b\n'

add('checkpoint/not-a-module', lambda tmp: save_checkpoint({'w': torch.zeros(2)}, path=tmp/'ck'), TypeError, 'expected an nn.Module', 'dict')
add('checkpoint/metric-not-json', lambda tmp: save_checkpoint(small_model(), None, 1, {'acc': object()}, tmp/'ck'), CheckpointError,
    'metrics.acc', 'cannot be written to meta.json')
add('checkpoint/manager-monitor-missing', lambda tmp: CheckpointManager(tmp/'run').save(small_model(), None, 1, {'loss': 0.1}),
    CheckpointError, "metrics expected the monitored 'val_loss'", "['loss']")
add('checkpoint/manager-mode', lambda tmp: CheckpointManager(tmp/'run', mode='lowest'), ValueError, '`mode`', "'lowest'")
add('checkpoint/manager-keep-last', lambda tmp: CheckpointManager(tmp/'run', keep_last=0), ValueError, '`keep_last`', '>= 1')

@case('checkpoint/manager-nan-weights', CheckpointError, 'refusing to save epoch 2', 'expected finite weights', '`0.weight` (1 values)', 'best epoch_0001')
def _(tmp):
    mgr = CheckpointManager(tmp/'run')
    mgr.save(small_model(), None, 1, {'val_loss': 0.5})
    bad = tiny_net(); bad.load_state_dict(small_model().state_dict())
    with torch.no_grad(): bad[0].weight[0, 0, 0, 0] = math.nan
    try: return mgr.save(bad, None, 2, {'val_loss': 0.1})
    finally: assert [c['epoch'] for c in mgr.checkpoints()] == [1] and mgr.best_path.name == 'epoch_0001'

@case('checkpoint/manager-other-config', CheckpointError, 'was trained with config', 'start fresh')
def _(tmp):
    mgr = CheckpointManager(tmp/'run', monitor=None)
    mgr.save(small_model(), None, 1, {}, config={'lr': 0.1})
    return mgr.resume(small_model(), config={'lr': 0.2})


# -- backbone weights and sizes ---------------------------------------------------------------------------------------

add('backbone/weights-int', lambda tmp: create_backbone('simple_cnn', weights=42), WeightsError,
    'expected a state_dict (a dict of tensors)', 'got 42 (int)')
add('backbone/weights-missing-file', lambda tmp: create_backbone('simple_cnn', weights=tmp/'gone.pth'), WeightsError, 'gone.pth', 'does not exist')
add('backbone/weights-folder-empty', lambda tmp: create_backbone('simple_cnn', weights=tmp), WeightsError, 'holds no model.safetensors')
add('backbone/weights-no-twin', lambda tmp: create_backbone('simple_cnn', weights='torchvision'), WeightsError, 'no torchvision twin')

@case('backbone/weights-bad-safetensors', WeightsError, "junk.safetensors': not a valid safetensors file")
def _(tmp): (tmp/'junk.safetensors').write_bytes(b'\x00' * 40); return create_backbone('simple_cnn', weights=tmp/'junk.safetensors')

@case('backbone/weights-pickle-payload', WeightsError, 'could not read weights from', 'evil.pth')
def _(tmp):
    (tmp/'evil.pth').write_bytes(pickle.dumps({'state_dict': _Payload()}, protocol=2))
    try: return create_backbone('simple_cnn', weights=tmp/'evil.pth')
    finally: assert not (Path.cwd()/'pwned').exists()

@cache
def narrow_weights() -> dict: return create_backbone('simple_cnn', widths=(16, 32, 64)).state_dict()

add('backbone/weights-other-widths', lambda tmp: create_backbone('simple_cnn', weights=narrow_weights()), WeightsError,
    'the weights do not fit the model', 'other shapes', '`stem.conv.weight`: weights (16, 3, 3, 3), model (32, 3, 3, 3)',
    'another architecture or variant')
add('backbone/weights-other-family', lambda tmp: create_backbone('simple_cnn', weights={'conv1.weight': torch.zeros(64, 3, 7, 7)}),
    WeightsError, 'do not match the model: missing', "unexpected ['conv1.weight']")
add('backbone/weights-not-tensors', lambda tmp: create_backbone('simple_cnn', weights={'stem.conv.weight': [[1.0]]}), WeightsError,
    'expected a state_dict of tensors', 'got a list under `stem.conv.weight`')
add('backbone/img-size-negative', lambda tmp: create_backbone('simple_cnn', img_size=-32), ConfigError, 'SimpleCNN', '`img_size`', '>= 1', '-32')
add('backbone/img-size-zero-tuple', lambda tmp: create_backbone('efficientnet_b0', img_size=(224, 0)), ConfigError, 'EfficientNet', '`img_size`', '(224, 0)')
add('backbone/img-size-zero-vit', lambda tmp: create_backbone('vit_tiny_16', img_size=0), ConfigError, '`img_size`', '>= 1', 'got 0')
add('backbone/timm-unknown-name', lambda tmp: create_backbone('timm/convnext_atoo'), KeyError, "'timm/convnext_atoo'", 'closest: timm/convnext_atto')
add('backbone/timm-bad-model-arg', lambda tmp: create_backbone('timm/convnext_atto', windw_size=4), ConfigError, 'TimmBackbone', '`model_args`', 'windw_size')
add('backbone/timm-pyramid-too-many-levels', lambda tmp: create_backbone('timm/vit_tiny_patch16_224', img_size=32, depth=5, features_only=True,
    out_indices=(0, 1, 2, 3, 4), feature_pyramid=True), ConfigError, '`out_indices`', 'at most 4 levels', '(0, 1, 2, 3, 4)')

@case('backbone/timm-not-installed', ImportError, 'timm', 'pip install core-models[timm]')
def _(tmp):
    saved = sys.modules.get('timm')
    sys.modules['timm'] = None  # what Python does for a missing package: `import timm` fails
    try: return create_backbone('timm/convnext_atto')
    finally:
        if saved is None: del sys.modules['timm']
        else: sys.modules['timm'] = saved

# -- weights a user names (model.backbone: {name, weights}) and fine-tuning settings ------------------------------------

add('weights/params-file-missing', lambda tmp: create_model('cnn', backbone={'name': 'resnet18', 'weights': str(tmp/'resnet18.pth')}, num_classes=3),
    WeightsError, 'resnet18.pth', 'does not exist')

@case('weights/params-file-of-another-variant', WeightsError, "ResNet: weights '", "r18.pth': the weights do not match the model: missing ['layer1.2.")
def _(tmp):
    import torchvision
    torch.save(torchvision.models.resnet18().state_dict(), tmp/'r18.pth')
    return create_model('cnn', backbone={'name': 'resnet34', 'weights': str(tmp/'r18.pth')}, num_classes=3)

@case('weights/params-file-not-a-state-dict', WeightsError, 'tensor.pth', 'holds a Tensor, not a state_dict')
def _(tmp):
    torch.save(torch.zeros(3), tmp/'tensor.pth')
    return create_model('cnn', backbone={'name': 'simple_cnn', 'weights': str(tmp/'tensor.pth')}, num_classes=3)

add('train/freeze-epochs-above-epochs', lambda tmp: TrainConfig(epochs=2, freeze_epochs=3), ConfigError,
    'TrainConfig', '`freeze_epochs`', 'at most epochs (2)', 'got 3')
add('train/freeze-epochs-plain-module', lambda tmp: Trainer(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), DigitsDataset('train', size=8),
                                                            freeze_epochs=1, device='cpu'),
    ConfigError, '`freeze_epochs`', '`freeze_backbone()`', 'the model is a Sequential')


# -- detection targets ------------------------------------------------------------------------------------------------

@cache
def detector() -> DetectionArchitecture:
    torch.manual_seed(0)
    return DetectionArchitecture(backbone='simple_cnn', head=DetectionHead(num_classes=3, fpn_channels=8, num_convs=1, in_strides=(4, 8))).train()

def detect(*boxes_per_image, labels=None):
    "A function calling the detector in training mode on two 32 px images with these boxes."
    def make(tmp):
        targets = [dict(boxes=torch.tensor(b, dtype=torch.float32).reshape(-1, 4), labels=torch.zeros(len(b), dtype=torch.long))
                   for b in boxes_per_image]
        if labels is not None: targets[0]['labels'] = labels
        return detector()(torch.randn(len(targets), 3, 32, 32), targets)
    return make

good = [[2., 2., 20., 20.]]
add('detection/box-x2-before-x1', detect(good, [[2., 2., 20., 20.], [20., 4., 8., 16.]]), ValueError,
    'targets[1]["boxes"][1]', 'expected x1 < x2 and y1 < y2', '[20.0, 4.0, 8.0, 16.0]', 'SanitizeBoundingBoxes')
add('detection/box-zero-area', detect([[4., 4., 4., 20.]], good), ValueError, 'targets[0]["boxes"][0]', 'positive width and height', '[4.0, 4.0, 4.0, 20.0]')
add('detection/box-nan', detect(good, [[1., math.nan, 9., 9.]]), ValueError, 'targets[1]["boxes"][0]', 'expected finite coordinates', 'nan')
add('detection/box-inf', detect([[1., 1., math.inf, 9.]], good), ValueError, 'targets[0]["boxes"][0]', 'expected finite coordinates', 'inf')
add('detection/several-bad-boxes', detect([[5., 5., 1., 1.], [6., 6., 2., 2.]], good), ValueError, '(2 such boxes in this image)')
add('detection/label-out-of-range', detect(good, good, labels=torch.tensor([3])), ValueError, 'targets[0]["labels"] expected values in 0..2', 'got 3..3')
add('detection/label-float', detect(good, good, labels=torch.tensor([1.0])), ValueError, 'targets[0]["labels"] expected an int64 tensor')
add('detection/boxes-five-columns', lambda tmp: detector()(torch.randn(1, 3, 32, 32), [dict(boxes=torch.zeros(1, 5), labels=torch.zeros(1, dtype=torch.long))]),
    ValueError, 'targets[0]["boxes"] expected a float tensor (N, 4) xyxy', '(1, 5)')
add('detection/target-not-dict', lambda tmp: detector()(torch.randn(1, 3, 32, 32), [[2., 2., 20., 20.]]), ValueError,
    'targets[0] expected a dict of "boxes" and "labels", got list')
add('detection/targets-count', lambda tmp: detector()(torch.randn(2, 3, 32, 32), [dict(boxes=torch.tensor(good), labels=torch.zeros(1, dtype=torch.long))]),
    ValueError, 'expected a list of 2 target dicts (one per image), got list of 1')


# -- segmentation targets ---------------------------------------------------------------------------------------------

@cache
def segmenter() -> SegmentationArchitecture:
    torch.manual_seed(0)
    return SegmentationArchitecture({'num_classes': 3, 'channels': 8}, backbone='simple_cnn').train()

def segment(mask):
    return lambda tmp: segmenter()(torch.randn(2, 3, 32, 32), mask)

add('segmentation/mask-value', segment(torch.full((2, 32, 32), 7)), ValueError, 'class indices in [0, 3) or ignore_index=255', 'got [7]')
add('segmentation/mask-float', segment(torch.zeros(2, 32, 32)), TypeError, 'integer class indices', 'torch.float32')
add('segmentation/mask-shape', segment(torch.zeros(2, 16, 32, dtype=torch.long)), ShapeError, 'expected input of shape (2, 32, 32)', 'got (2, 16, 32)')


# -- training ---------------------------------------------------------------------------------------------------------

@cache
def digits(n:int=64):
    from torch.utils.data import Subset
    return Subset(DigitsDataset('train', size=8), range(n))

class WithNaNs(torch.utils.data.Dataset):
    def __init__(self, ds, bad): self.ds, self.bad = ds, set(bad)
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        x, y = self.ds[i]
        return (torch.full_like(x, math.nan) if i in self.bad else x), y

def digit_model():
    torch.manual_seed(0)
    return create_model('cnn', backbone='simple_cnn', in_chans=1, num_classes=10)

def fit(train=None, val=None, **cfg):
    return lambda tmp: Trainer(digit_model(), train if train is not None else digits(), val,
                               config=TrainConfig(**{'epochs': 2, 'batch_size': 16, 'progress': False, **cfg})).fit()

add('training/lr-1e9', fit(lr=1e9), NonFiniteError, 'Trainer:', 'epoch 1', 'Likely cause: the learning rate (lr=1e+09')
add('training/nan-images', fit(WithNaNs(digits(), [5])), NonFiniteError, 'the training loss is nan at epoch 1, step', "this batch's images hold 64 nan/inf values")
add('training/nan-validation', fit(val=WithNaNs(digits(), [0])), NonFiniteError, 'the validation loss is nan after epoch 1', 'validation data hold nan/inf')
add('training/all-nan-skipped', fit(WithNaNs(digits(), range(64)), skip_nonfinite=True), NonFiniteError,
    'every batch had a non-finite loss in epoch 1 (4 of 4 skipped')
add('training/unknown-key', lambda tmp: TrainConfig.resolve({'epoch': 3}), ConfigError, 'TrainConfig', '`epoch`', "did you mean 'epochs'")
add('training/epochs-zero', lambda tmp: TrainConfig(epochs=0), ConfigError, 'TrainConfig', '`epochs`', '>= 1', 'got 0')
add('training/lr-negative', lambda tmp: TrainConfig(lr=-1.0), ConfigError, '`lr`', '> 0')
add('training/epochs-text', lambda tmp: TrainConfig.resolve({'epochs': 'five'}), ConfigError, '`epochs` expected an int', "'five'")
add('training/empty-dataset', lambda tmp: Trainer(digit_model(), [], config=TrainConfig(progress=False)), ValueError, 'the training set gives no batch')

# -- inference precision (core_models.precision, evaluate's precision argument) ---------------------------------------

def _precision(device='cpu', precision='auto'):
    from core_models.precision import inference_precision
    return lambda tmp: inference_precision(device, precision)

add('precision/unknown', _precision(precision='float16'), ConfigError, 'inference_precision', '`precision`', "'auto', 'fp32', 'bf16', 'fp16'", "got 'float16'")
add('precision/device-name', _precision(device='gpu'), ConfigError, '`device`', "a name such as 'cpu' or 'cuda:0'", "got 'gpu'")
add('evaluate/precision', lambda tmp: __import__('core_models.training').training.evaluate(digit_model(), digits(8), precision='half'),
    ConfigError, '`precision`', "one of 'auto'", "got 'half'")
@case('training/resume-damaged-last', CheckpointError, 'epoch_0001/meta.json', 'is not valid JSON')
def _(tmp):
    cfg = TrainConfig(epochs=1, batch_size=16, progress=False, checkpoint_dir=tmp/'ck')
    Trainer(digit_model(), digits(), config=cfg).fit()
    (tmp/'ck'/'epoch_0001'/'meta.json').write_text('{"trunc')
    return Trainer(digit_model(), digits(), config=cfg.to_dict() | {'epochs': 2}).fit()

if not torch.cuda.is_available():
    add('training/fp16-on-cpu', lambda tmp: Trainer(digit_model(), digits(), config=TrainConfig(precision='fp16', device='cpu')), ConfigError,
        '`precision`', 'fp16 autocast needs a CUDA device')


# -- data.augment in params.yaml (core_models.data.augmentation) -------------------------------------------------------

def augment(spec, task='classification'):
    from core_models.data import augmentation
    return lambda tmp: augmentation(spec, task, size=(32, 32))

add('augment/unknown-key', augment({'hflp': 0.5}), ConfigError, '`data.augment.hflp`', 'expected one of random_resized_crop', "did you mean 'hflip'")
add('augment/probability-above-1', augment({'hflip': 2}), ConfigError, '`data.augment.hflip`', 'a probability between 0 and 1', 'got 2')
add('augment/crop-scale-reversed', augment({'random_resized_crop': {'scale': [1.0, 0.5]}}, 'detection'), ConfigError,
    '`data.augment.random_resized_crop.scale`', '[low, high]', 'got [1.0, 0.5]')
add('augment/jitter-unknown', augment({'color_jitter': {'brightnes': 0.2}}), ConfigError, '`data.augment.color_jitter.brightnes`', "did you mean 'brightness'")
add('augment/hue-too-big', augment({'color_jitter': {'hue': 0.9}}), ConfigError, '`data.augment.color_jitter.hue`', '<= 0.5', 'got 0.9')
add('augment/rotate-text', augment({'rotate': 'a bit'}), ConfigError, '`data.augment.rotate`', 'degrees', "'a bit'")
add('augment/not-a-mapping', augment('yes'), ConfigError, '`data.augment`', 'false, true or a mapping', "'yes'")

# -- predictions and exports (core_models.inference, core_models.export) -----------------------------------------------

import numpy as np
from core_models.data import DataError

def predictor(**kw):
    from core_models.inference import Predictor, Usage
    model = create_model('cnn', backbone='simple_cnn', head='classifier', config=dict(num_classes=3, in_chans=1))
    return Predictor(model, Usage(task='classification', classes=['a', 'b', 'c'], in_chans=1, input_size=16), **kw)

def predict_file(data:bytes, name='photo.png'):
    def make(tmp):
        (tmp/name).write_bytes(data)
        return predictor()(tmp/name)
    return make

add('predict/unreadable-image', predict_file(b'not a png'), DataError, 'photo.png', 'not a readable image')
add('predict/empty-image', predict_file(b''), DataError, 'photo.png', 'empty image file')
add('predict/array-with-7-channels', lambda tmp: predictor()(np.zeros((5, 5, 7))), DataError,
    'shape (5, 5, 7)', 'expected an image as (H, W), (H, W, C) or (C, H, W)')
add('predict/not-an-image', lambda tmp: predictor()({'pixels': 1}), DataError, 'expected an image: a file path, a PIL image', 'got dict')
add('predict/precision', lambda tmp: predictor(precision='fp8'), ConfigError, '`precision`', 'auto, fp32, bf16, fp16', "'fp8'")
add('predict/usage-unknown-field', lambda tmp: __import__('core_models.inference').inference.Usage.from_dict({'size': 32}),
    ConfigError, 'Usage', '`size`', 'one of the fields')
add('predict/predictions-file-suffix', lambda tmp: __import__('core_models.inference').inference.write_predictions([], tmp/'p.txt'),
    DataError, 'p.txt', '.json or .csv', "'.txt'")
add('export/format', lambda tmp: __import__('core_models.export').export.export_model(predictor().model, 'tflite', out=tmp),
    ConfigError, '`format`', 'onnx, torch.export, torchscript', "'tflite'")


# -- the test ---------------------------------------------------------------------------------------------------------

# -- image dtypes at the model's call (added with check_dtype) ----------------------------------------------------------

def _call(model_fn, dtype):
    def make(tmp:Path):
        m = model_fn().eval()
        return m(torch.zeros(1, 3, 32, 32, dtype=dtype))
    return make

for _name, _fn in (('cnn', lambda: create_model('cnn', backbone='simple_cnn', num_classes=3)),
                   ('detection', lambda: create_model('detection', backbone='resnet18', num_classes=3)),
                   ('backbone', lambda: create_backbone('resnet18'))):
    add(f'forward/{_name}-uint8', _call(_fn, torch.uint8), TypeError, 'expected a floating-point image tensor', 'x.float() / 255', 'torch.uint8')
    add(f'forward/{_name}-float64', _call(_fn, torch.float64), TypeError, 'expected torch.float32', 'got torch.float64')
    add(f'forward/{_name}-int64', _call(_fn, torch.int64), TypeError, 'floating-point', 'torch.int64')


@pytest.mark.parametrize('c', CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_clear_error(c, tmp_path):
    verdict, why = outcome(c, tmp_path)
    assert verdict == 'clear', f'{c.id}: {verdict}: {why}'


def test_case_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# -- bad-looking inputs that must *not* fail, and must stay finite ----------------------------------------------------

def test_all_ignore_segmentation_target_gives_zero_loss_not_nan():
    model = segmenter()
    model.zero_grad()
    losses = model(torch.randn(2, 3, 32, 32), torch.full((2, 32, 32), 255))
    sum(losses.values()).backward()
    assert {k: v.item() for k, v in losses.items()} == {'loss_ce': 0.0}
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_pointer_files_never_lead_outside_the_checkpoint_root(tmp_path):
    "A hostile last.json/best.json ('../elsewhere', an absolute path) is ignored: the manager falls back to what is under its root."
    outside = save_checkpoint(small_model(), None, 9, {'val_loss': 0.0}, tmp_path/'elsewhere')
    mgr = CheckpointManager(tmp_path/'run')
    mgr.save(small_model(), None, 1, {'val_loss': 0.5})
    for target in ('../elsewhere', str(outside), 'epoch_0001/../../elsewhere'):
        for f in ('last.json', 'best.json'): (mgr.root/f).write_text(json.dumps({'path': target}))
        assert mgr.last_path == mgr.root/'epoch_0001' and mgr.best_path is None
        assert mgr.resume(small_model()).epoch == 1


def test_image_without_boxes_is_background_not_an_error():
    losses = detector()(torch.randn(2, 3, 32, 32), [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))] * 2)
    assert all(torch.isfinite(v) for v in losses.values())


if __name__ == '__main__':  # the tally, for the note
    import tempfile
    counts = {'clear': 0, 'unclear': 0, 'silent': 0}
    for c in CASES:
        with tempfile.TemporaryDirectory() as d: verdict, why = outcome(c, Path(d))
        counts[verdict] += 1
        if verdict != 'clear' or '-v' in sys.argv: print(f'{verdict:8} {c.id}: {why}')
    print(f'tried {len(CASES)} / clear {counts["clear"]} / unclear {counts["unclear"]} / silent {counts["silent"]}')

