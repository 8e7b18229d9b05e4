"""The own-data template (pipelines/own-data) run by `dvc repro` on the user's images, one project per format.

Each project is a fresh git repository holding the package, settings.ini and the template (its DVC sub-project,
its `core_models` link), with a small dataset of real files written into the template's `my-data/`:
class folders of JPEGs and PNGs, a COCO dataset as COCO ships it (per-split train.json / val.json / test.json,
`bbox` = [x, y, width, height], category ids that do not start at 0, `area`, `iscrowd`), or images with palette
PNG masks. Only `data.format`, the image size, `data.augment`, the epochs and a smaller model change in params.yaml: the task, the
architecture and the classes come from the data. Then real DVC: `dvc repro` trains and evaluates, the test metric
beats chance (or the all-background baseline) clearly, `dvc status` is clean, and one changed image makes prepare
(and nothing upstream of it) stale. The malformed-data cases of the issue live in tests/test_own_data.py.
"""
import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np
import pytest, yaml
from PIL import Image
from conftest import ROOT

BIN = Path(sys.executable).parent
TEMPLATE = ROOT/'pipelines'/'own-data'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       'GIT_AUTHOR_NAME': 'test', 'GIT_AUTHOR_EMAIL': 'test@example.com',
       'GIT_COMMITTER_NAME': 'test', 'GIT_COMMITTER_EMAIL': 'test@example.com'}
COLOURS = {'red': (220, 40, 40), 'green': (40, 200, 40), 'blue': (40, 40, 220)}


def sh(*args, cwd):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def noisy(w, h, rgb, rng): return np.clip(np.array(rgb) + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def class_folders(root:Path, n=12):
    "Three colours, `n` images each, of varying sizes, as JPEG (RGB, CMYK) and PNG (RGBA)."
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root/name).mkdir(parents=True)
        for i in range(n):
            im = Image.fromarray(noisy(int(rng.integers(30, 50)), int(rng.integers(30, 50)), rgb, rng))
            if i % 3 == 1: im.convert('RGBA').save(root/name/f'{i}.png')
            elif i % 3 == 2: im.convert('CMYK').save(root/name/f'{i}.jpg')
            else: im.save(root/name/f'{i}.jpg', quality=90)


def coco_splits(root:Path, sizes=(('train', 40), ('val', 8), ('test', 8))):
    "COCO's own layout: one JSON a split and one image folder; a red (category 3) or blue (category 7) box an image."
    rng, image_id, ann_id = np.random.default_rng(1), 1, 1
    (root/'images').mkdir(parents=True)
    for split, n in sizes:
        images, anns = [], []
        for i in range(n):
            w, h = int(rng.integers(48, 64)), int(rng.integers(48, 64))
            px = noisy(w, h, (128, 128, 128), rng)
            bw, bh = int(rng.integers(w // 3, w // 2)), int(rng.integers(h // 3, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = (3, 7)[i % 2]
            px[y:y + bh, x:x + bw] = COLOURS['red' if cat == 3 else 'blue']
            name = f'{split}_{i:03d}.jpg'
            Image.fromarray(px).save(root/'images'/name, quality=90)
            images.append({'id': image_id, 'file_name': name, 'width': w, 'height': h})
            anns.append({'id': ann_id, 'image_id': image_id, 'category_id': cat, 'bbox': [x, y, bw, bh],
                         'area': bw * bh, 'iscrowd': 0, 'segmentation': []})
            image_id, ann_id = image_id + 1, ann_id + 1
        (root/f'{split}.json').write_text(json.dumps({'images': images, 'annotations': anns, 'categories':
                                                      [{'id': 3, 'name': 'red', 'supercategory': 'box'}, {'id': 7, 'name': 'blue', 'supercategory': 'box'}]}))


def mask_folders(root:Path, n=40, size=(48, 40)):
    "Images with a red (class 1) or blue (class 2) square and VOC-style palette PNG masks, 255 on each square's edge."
    (root/'images').mkdir(parents=True); (root/'masks').mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        px, m = noisy(*size, (128, 128, 128), rng), np.zeros(size[::-1], np.uint8)
        c, s = 1 + i % 2, int(rng.integers(14, 22))
        x, y = int(rng.integers(0, size[0] - s)), int(rng.integers(0, size[1] - s))
        px[y:y + s, x:x + s] = COLOURS['red' if c == 1 else 'blue']
        m[y:y + s, x:x + s] = 255; m[y + 1:y + s - 1, x + 1:x + s - 1] = c
        Image.fromarray(px).save(root/'images'/f'{i:02d}.png')
        pm = Image.fromarray(m, mode='P'); pm.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
        pm.save(root/'masks'/f'{i:02d}.png')


SMALL_CNN = {'name': 'simple_cnn', 'widths': [16, 32, 64, 128], 'depths': [1, 1, 1, 1], 'stem_stride': 2}
FORMATS = {  # format: (writer, the params that differ from the template's, the metric, what chance scores)
    'imagefolder': (class_folders, {'data': {'size': 32, 'augment': {'hflip': 0.5, 'color_jitter': {'brightness': 0.1}}}, 'model': {'backbone': 'simple_cnn'},
                                    'train': {'epochs': 6, 'batch_size': 8, 'lr': 0.01}}, 'accuracy', 1 / 3),
    'coco': (coco_splits, {'data': {'size': 48, 'augment': {'hflip': 0.5}}, 'model': {'backbone': 'resnet18', 'fpn_channels': 32, 'num_convs': 1},
                           'train': {'epochs': 8, 'batch_size': 8, 'lr': 0.003}}, 'map', 0.0),
    'masks': (mask_folders, {'data': {'size': 32, 'augment': {'hflip': 0.5, 'vflip': 0.5}}, 'model': {'backbone': SMALL_CNN, 'channels': 16, 'dice_weight': 0.5},
                             'train': {'epochs': 80, 'batch_size': 8, 'lr': 0.02}}, 'miou', None),
}
# Margins hold for any training seed, not one lucky one: the masks model sits on a plateau (squares found, colours
# not yet told apart, mIoU ~0.4) until some epoch between 15 and 40, so 40 epochs missed the margin (fp32 seed 2 of 0-4);
# with 80, train.seed 0-5 in fp32 and bf16 all reached test mIoU 0.94-0.96 (all-background 0.29).
CHANGED = {'imagefolder': 'my-data/red/0.jpg', 'coco': 'my-data/images/train_000.jpg', 'masks': 'my-data/images/00.png'}


def make_project(base:Path, format:str) -> Path:
    "A git repository like a clone of this one, reduced to what the template needs, with the user's data in my-data/."
    repo = base/'repo'
    for f in ['settings.ini', *(p.relative_to(ROOT).as_posix() for p in (ROOT/'core_models').rglob('*.py'))]:
        (repo/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT/f, repo/f)
    proj = repo/'pipelines'/'own-data'
    shutil.copytree(TEMPLATE, proj, symlinks=True, ignore=shutil.ignore_patterns('my-data', 'data', 'models', 'dvclive', 'eval', 'dvc.lock'))
    assert (proj/'core_models').is_symlink() and (proj/'core_models'/'data.py').is_file()
    writer, changes, _, _ = FORMATS[format]
    writer(proj/'my-data')
    params = yaml.safe_load((proj/'params.yaml').read_text())
    params['data']['format'] = format
    for sec, values in changes.items(): params[sec].update(values)
    (proj/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    sh('git', 'add', '-A', cwd=repo); sh('git', 'commit', '-q', '-m', f'own data ({format})', cwd=repo)
    return proj


@pytest.fixture(scope='module', params=list(FORMATS))
def trained(request, tmp_path_factory):
    "One project per format after `dvc repro` and a commit of the run."
    format = request.param
    proj = make_project(tmp_path_factory.mktemp(format), format)
    out = sh(BIN/'dvc', 'repro', cwd=proj)
    sh('git', 'add', '-A', cwd=proj); sh('git', 'commit', '-q', '-m', 'trained', cwd=proj)
    return format, proj, out


def all_background_miou(proj:Path) -> float:
    "The test mIoU of a model that predicts background everywhere: background's IoU is its share of the counted pixels, others 0."
    import torch
    masks = torch.load(next((proj/'data').glob('*-segmentation'))/'test.pt', weights_only=True)['masks']
    counted = masks[masks != 255]
    present = len(counted.unique())
    return (counted == 0).float().mean().item() / present


def test_repro_trains_and_beats_chance(trained):
    format, proj, out = trained
    _, _, metric, chance = FORMATS[format]
    for stage in ('prepare', 'train', 'evaluate'): assert f"Running stage '{stage}'" in out, out
    test = json.loads((proj/'eval'/'metrics.json').read_text())['test']
    if chance is None: chance = all_background_miou(proj)
    margin = {'accuracy': 0.4, 'map': 0.3, 'miou': 0.2}[metric]
    assert test[metric] > chance + margin, (test, chance)
    task = {'imagefolder': 'classification', 'coco': 'detection', 'masks': 'segmentation'}[format]
    summary = json.loads((proj/'data'/f'my-data-{task}'/'summary.json').read_text())
    assert summary['classes'] == {'imagefolder': ['blue', 'green', 'red'], 'coco': ['red', 'blue'], 'masks': ['class1', 'class2']}[format]
    if format == 'coco': assert {s: v['images'] for s, v in summary['splits'].items()} == {'train': 40, 'val': 8, 'test': 8}
    meta = json.loads((proj/'models'/'my-model'/'meta.json').read_text())
    assert meta['config'].get('num_classes', (meta['config'].get('head') or {}).get('num_classes')) == len(summary['classes']) + (task == 'segmentation')
    assert (proj/'data'/f'my-data-{task}'/'samples.png').is_file()  # prepare's grid of samples, labels drawn
    assert (proj/'eval'/'plots'/'augment.png').stat().st_size > 1000  # train's picture of data.augment at work


def test_changing_one_image_makes_prepare_stale(trained):
    format, proj, _ = trained
    assert json.loads(sh(BIN/'dvc', 'status', '--json', cwd=proj) or '{}') == {}
    f = proj/CHANGED[format]
    with Image.open(f) as im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(f)
    changed = json.loads(sh(BIN/'dvc', 'status', '--json', cwd=proj))
    assert 'prepare' in changed and 'my-data' in json.dumps(changed['prepare']), changed
    assert set(changed) == {'prepare'}, changed  # train and evaluate wait for prepare's new output
    sh('git', 'checkout', '--', '.', cwd=proj)
    assert json.loads(sh(BIN/'dvc', 'status', '--json', cwd=proj) or '{}') == {}
