"""The user's own images through the pipeline's CLI: class folders, a COCO JSON + images, image + mask folders.

Each test writes a small dataset of real files (JPEG and PNG written with Pillow, a COCO JSON as COCO specifies:
`bbox` = [x, y, width, height] in pixels, category ids that do not start at 0) into a temporary folder with a
`params.yaml` whose `data:` section names it, then runs `core-models prepare --only data`, `train` and `evaluate`
as the pipeline's stages would. The malformed cases check that `prepare` refuses with exit code 2 and one line
naming the file and the problem.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, yaml
from PIL import Image
from conftest import ROOT, cli_in_process

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
RED, BLUE = (220, 30, 30), (30, 30, 220)
TRAIN = {'epochs': 3, 'batch_size': 8, 'lr': 0.01, 'device': 'cpu', 'seed': 0}


def cli(*args, cwd):
    return subprocess.run([BIN/'core-models', *map(str, args)], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def noisy(size, rgb, rng):
    w, h = size
    return np.clip(np.array(rgb) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def class_folders(root:Path, n=20):
    "Red and blue images of varying sizes and modes (RGB JPEG, grey PNG, RGBA PNG, CMYK JPEG) in class folders."
    rng = np.random.default_rng(0)
    for name, rgb in (('red', RED), ('blue', BLUE)):
        (root/name).mkdir(parents=True)
        for i in range(n):
            im = Image.fromarray(noisy((24 + i, 20 + i % 5), rgb, rng))
            if i % 4 == 1: im.convert('RGBA').save(root/name/f'{i}.png')
            elif i % 4 == 2: im.convert('CMYK').save(root/name/f'{i}.jpg')
            else: im.save(root/name/f'{i}.jpg')
    return root


def coco_folder(root:Path, n=16):
    "Images of varying size with one red (category 3) or blue (category 7) rectangle, and their COCO JSON."
    rng = np.random.default_rng(1)
    (root/'images').mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        w, h = int(rng.integers(40, 64)), int(rng.integers(40, 64))
        px = noisy((w, h), (128, 128, 128), rng)
        bw, bh = w // 2, h // 2
        x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        cat = (3, 7)[i % 2]
        px[y:y + bh, x:x + bw] = RED if cat == 3 else BLUE
        Image.fromarray(px).save(root/'images'/f'{i:03d}.jpg')
        images.append({'id': i + 1, 'file_name': f'{i:03d}.jpg', 'width': w, 'height': h})
        anns.append({'id': 100 + i, 'image_id': i + 1, 'category_id': cat, 'bbox': [x, y, bw, bh], 'area': bw * bh, 'iscrowd': 0})
    spec = {'images': images, 'annotations': anns, 'categories': [{'id': 3, 'name': 'red'}, {'id': 7, 'name': 'blue'}]}
    (root/'annotations.json').write_text(json.dumps(spec))
    return root


def mask_folders(root:Path, n=16, size=(40, 32)):
    "Images with a red (class 1) or blue (class 2) square and palette PNG masks (VOC's format), 255 on each border."
    (root/'images').mkdir(parents=True); (root/'masks').mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        px, m = noisy(size, (128, 128, 128), rng), np.zeros(size[::-1], np.uint8)
        c, x, y = 1 + i % 2, int(rng.integers(0, 16)), int(rng.integers(0, 10))
        px[y:y + 20, x:x + 20] = RED if c == 1 else BLUE
        m[y:y + 20, x:x + 20] = 255; m[y + 1:y + 19, x + 1:x + 19] = c
        Image.fromarray(px).save(root/'images'/f'{i}.png')
        pm = Image.fromarray(m, mode='P'); pm.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
        pm.save(root/'masks'/f'{i}.png')
    return root


MODELS = {'imagefolder': {'architecture': 'cnn', 'backbone': 'simple_cnn', 'in_chans': 3},
          'coco': {'architecture': 'detection', 'backbone': 'resnet18', 'fpn_channels': 32, 'num_convs': 1},
          'masks': {'architecture': 'segmentation', 'in_chans': 3, 'channels': 16,
                    'backbone': {'name': 'simple_cnn', 'widths': [16, 32, 64, 128], 'depths': [1, 1, 1, 1], 'stem_stride': 2}}}
WRITERS = {'imagefolder': class_folders, 'coco': coco_folder, 'masks': mask_folders}


def project(tmp:Path, format:str, data:dict|None=None, model:dict|None=None) -> Path:
    "A folder with `params.yaml` (and settings.ini) whose `data:` section names a dataset of `format` in `mydata/`."
    WRITERS[format](tmp/'mydata')
    shutil.copy2(ROOT/'settings.ini', tmp/'settings.ini')
    params = {'prepare': {}, 'data': {'format': format, 'path': 'mydata', 'size': 32, **(data or {})},
              'model': {'name': 'mine', **MODELS[format], **(model or {})}, 'train': TRAIN,
              'evaluate': {'split': 'test', 'batch_size': 16}}
    (tmp/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp


@pytest.mark.parametrize('format, task, metric', [('imagefolder', 'classification', 'accuracy'),
                                                  ('coco', 'detection', None), ('masks', 'segmentation', None)])
def test_prepare_train_evaluate(tmp_path, one_thread, format, task, metric):
    "The three stages in this process (tests/test_own_data_pipeline.py runs them as `dvc repro`'s processes, per format)."
    repo = project(tmp_path, format)
    cli = cli_in_process
    r = cli('prepare', '--only', 'data', cwd=repo)
    assert r.returncode == 0, r.stderr
    out = repo/'data'/f'mydata-{task}'
    summary = json.loads((out/'summary.json').read_text())
    assert summary['task'] == task and summary['classes'] in (['blue', 'red'], ['red', 'blue'], ['class1', 'class2'])
    assert sum(s['images'] for s in summary['splits'].values()) == {'imagefolder': 40, 'coco': 16, 'masks': 16}[format]
    assert all(s['images'] > 0 for s in summary['splits'].values())
    assert (out/'samples.png').stat().st_size > 1000  # the grid of samples with their labels
    r = cli('train', '--out', 'models/mine', '--live', 'dvclive/train', cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((repo/'models'/'mine'/'meta.json').read_text())['config']
    num_classes = config.get('num_classes', (config.get('head') or {}).get('num_classes'))
    assert num_classes == {'imagefolder': 2, 'coco': 2, 'masks': 3}[format]  # from the data
    r = cli('evaluate', '--model', 'models/mine', '--out', 'eval', '--live', 'dvclive/train', cwd=repo)
    assert r.returncode == 0, r.stderr[-3000:]
    test = json.loads((repo/'eval'/'metrics.json').read_text())['test']
    assert test and all(np.isfinite(v) for v in test.values() if isinstance(v, (int, float))), test
    if metric: assert test[metric] > 0.5, test  # two colours: clearly above chance (0.5)


def _corrupt_image(repo):  # a JPEG whose bytes are text
    f = repo/'mydata'/'red'/'3.jpg'; f.write_text('not a jpeg'); return f, 'not a readable image'
def _empty_image(repo):
    f = repo/'mydata'/'blue'/'0.jpg'; f.write_bytes(b''); return f, 'empty image file'
def _empty_class(repo):
    f = repo/'mydata'/'green'; f.mkdir(); (f/'readme.txt').write_text('no images here'); return f, 'class folder with no images'
def _missing_image(repo):
    f = repo/'mydata'/'images'/'005.jpg'; f.unlink(); return repo/'mydata'/'annotations.json', "'005.jpg' (id 6) is missing"
def _box_outside(repo):
    ann = repo/'mydata'/'annotations.json'
    spec = json.loads(ann.read_text()); spec['annotations'][2]['bbox'][0] = 60
    ann.write_text(json.dumps(spec)); return ann, 'annotation 102 box [60,'
def _mask_size(repo):
    f = repo/'mydata'/'masks'/'4.png'; Image.new('L', (20, 20)).save(f); return f, 'mask is 20x20, its image 4.png is 40x32'
def _class_above(repo):
    return repo/'mydata'/'masks', 'is above num_classes=2'

MALFORMED = {'corrupt image': ('imagefolder', _corrupt_image, {}), 'empty image': ('imagefolder', _empty_image, {}),
             'empty class folder': ('imagefolder', _empty_class, {}), 'missing COCO image': ('coco', _missing_image, {}),
             'box outside its image': ('coco', _box_outside, {}), 'mask size': ('masks', _mask_size, {}),
             'class index above num_classes': ('masks', _class_above, {'num_classes': 2})}


@pytest.mark.parametrize('case', MALFORMED)
def test_malformed_data_fails_in_prepare(tmp_path, case):
    "The first case in a real `core-models` process (exit code 2, one line on stderr, no traceback); the others in this one."
    format, spoil, model = MALFORMED[case]
    repo = project(tmp_path, format, model=model)
    path, problem = spoil(repo)
    r = (cli if case == next(iter(MALFORMED)) else cli_in_process)('prepare', '--only', 'data', cwd=repo)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    msg = r.stderr.strip()
    assert len(msg.splitlines()) == 1 and 'Traceback' not in msg, msg
    assert msg.startswith('core-models prepare: ') and problem in msg, msg
    assert str(path.relative_to(repo)) in msg or path.name in msg, msg  # names the file
    assert not (repo/'data'/'mydata-classification'/'train.pt').exists()


DVC_YAML = """stages:
  prepare:
    cmd: core-models prepare --only data
    deps: [mydata]
    params: [data]
    outs: [data/mydata-classification]
  train:
    cmd: core-models train --out models/mine --live dvclive/train
    deps: [data/mydata-classification]
    params: [data, model, train]
    outs: [models/mine, dvclive/train]
  evaluate:
    cmd: core-models evaluate --model models/mine --out eval --live dvclive/train
    deps: [models/mine, dvclive/train]
    params: [data, evaluate]
    outs: [eval]
metrics: [eval/metrics.json]
"""


def test_dvc_repro_on_own_images(tmp_path):
    "A user's pipeline on class folders with real git and DVC: the data folder is a dependency, so one changed image reruns prepare."
    def sh(*args):
        r = subprocess.run([str(a) for a in args], cwd=repo, env={**ENV, 'GIT_AUTHOR_NAME': 't', 'GIT_AUTHOR_EMAIL': 't@e.x',
                           'GIT_COMMITTER_NAME': 't', 'GIT_COMMITTER_EMAIL': 't@e.x'}, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r.stdout
    repo = project(tmp_path, 'imagefolder')
    (repo/'dvc.yaml').write_text(DVC_YAML)
    sh('git', 'init', '-q', '-b', 'main'); sh(BIN/'dvc', 'init', '-q')
    sh('git', 'add', '-A'); sh('git', 'commit', '-q', '-m', 'own data')  # dvclive needs a commit to start from
    sh(BIN/'dvc', 'repro')
    sh('git', 'add', '-A'); sh('git', 'commit', '-q', '-m', 'trained')
    assert json.loads((repo/'eval'/'metrics.json').read_text())['test']['accuracy'] > 0.5
    assert json.loads(sh(BIN/'dvc', 'status', '--json') or '{}') == {}
    Image.new('RGB', (30, 30), RED).save(repo/'mydata'/'red'/'0.jpg')  # one image changed
    changed = json.loads(sh(BIN/'dvc', 'status', '--json'))
    assert 'prepare' in changed and 'mydata' in json.dumps(changed['prepare']), changed


def test_split_folders_and_exif(tmp_path):
    "`train/`, `val/` and `test/` folders are used as they are; a JPEG stored sideways with an EXIF rotation is read upright."
    from core_models.data import write_image_data, load_prepared, read_image
    for split, n in (('train', 6), ('val', 2), ('test', 3)): class_folders(tmp_path/'photos'/split, n)
    exif = Image.Exif(); exif[0x0112] = 6  # Orientation: rotate 90 degrees
    Image.new('RGB', (40, 20), RED).save(tmp_path/'photos'/'test'/'red'/'sideways.jpg', exif=exif)
    assert tuple(read_image(tmp_path/'photos'/'test'/'red'/'sideways.jpg').shape) == (3, 40, 20)
    out = write_image_data('imagefolder', tmp_path/'photos', tmp_path/'data', size=16)
    summary = json.loads((out/'summary.json').read_text())
    assert {s: v['images'] for s, v in summary['splits'].items()} == {'train': 12, 'val': 4, 'test': 7}
    assert summary['splits']['test']['per_class'] == {'blue': 3, 'red': 4}
    assert tuple(load_prepared('photos', 'test', tmp_path/'data')[0][0].shape) == (3, 16, 16)
