"""Predictions on new images (issue 16): the digits model README.md's round trip trained with the real CLI
(`make run`, then `dvc exp run`: tests/conftest.py's `readme_journey`, once a session), in a copy of that project,
registered there (a git commit + tag) as digits@1.0.0, used by `name@version` (also from its git tag once the work
tree no longer has it) and by `core-models predict`. Real git, real files, real PNGs of other sizes and colour modes.
"""
import json, os, shutil, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pytest, torch, yaml
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from conftest import ROOT, copy_project, cli_in_process as cli

from core_models.inference import Predictor, Usage, UsageWarning, to_image_tensor
from core_models.versioning.checkpoint import save_checkpoint, read_meta
from core_models.versioning.registry import ModelRegistry

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       'GIT_AUTHOR_NAME': 'test', 'GIT_AUTHOR_EMAIL': 'test@example.com',
       'GIT_COMMITTER_NAME': 'test', 'GIT_COMMITTER_EMAIL': 'test@example.com'}
N_IMAGES = 30


def sh(*args, cwd, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope='module')
def released(readme_journey, tmp_path_factory):
    "A copy of the README's project (a digits model trained by `core-models prepare/train`), its model registered (git commit + tag) as digits@1.0.0, and test PNGs."
    repo = copy_project(readme_journey, tmp_path_factory.mktemp('predict'))
    assert yaml.safe_load((repo/'params.yaml').read_text())['train']['epochs'] >= 5  # trained as `make run` does: judged on accuracy below
    reg = ModelRegistry(repo/'registry', git=True)
    mv = reg.register('digits', '1.0.0', 'cnn', checkpoint=repo/'models'/'digits-cnn')
    # the test digits as a user has them: PNG files, 3x larger, RGB
    test = torch.load(repo/'data'/'digits-classification'/'test.pt', weights_only=True)
    photos = repo/'photos'
    photos.mkdir()
    labels = {}
    for i in range(N_IMAGES):
        img = Image.fromarray(test['images'][i][0].numpy()).convert('RGB').resize((96, 96), Image.BILINEAR)
        f = photos/f'{i:02d}.png'; img.save(f); labels[f.name] = str(int(test['labels'][i]))
    return repo, reg, mv, labels


def test_the_version_carries_how_to_use_it(released):
    repo, reg, mv, _ = released
    usage = read_meta(repo/'models'/'digits-cnn')['usage']  # recorded by the train stage
    assert usage == mv.usage  # copied into the registry's record ...
    committed = json.loads(sh('git', 'show', f'digits@v1.0.0:registry/digits/1.0.0/meta.json', cwd=repo).stdout)
    assert committed['usage'] == usage  # ... which git holds at the version's tag
    u = Usage.from_dict(usage)
    assert (u.task, u.in_chans, u.input_size, u.classes) == ('classification', 1, (32, 32), [str(i) for i in range(10)])
    assert (u.mean, u.std, u.resize) == ((0.0,), (1.0,), 'stretch')


def test_predictions_equal_a_direct_forward_with_the_recorded_preprocessing(released):
    repo, reg, mv, labels = released
    files = sorted((repo/'photos').glob('*.png'))
    preds = Predictor.load('digits@1.0.0', registry=reg, precision='fp32').predict(files, top_k=10)
    u = Usage.from_dict(mv.usage)
    # the recorded steps by hand: read as greyscale ('L'), scale to [0, 1], resize (stretch, bilinear, antialiased), normalise
    x = torch.stack([TF.normalize(TF.resize(TF.pil_to_tensor(Image.open(f).convert('L')).float() / 255,
                                            list(u.input_size), antialias=True), list(u.mean), list(u.std)) for f in files])
    with torch.no_grad(): probs = reg.load('digits', '1.0.0')(x).softmax(-1)
    for p, row in zip(preds, probs):
        assert p.indices == row.argsort(descending=True).tolist()
        torch.testing.assert_close(torch.tensor(p.scores), row.sort(descending=True).values, atol=1e-5, rtol=1e-5)
        assert p.image_size == (96, 96)


def test_images_of_other_sizes_and_modes(released):
    repo, reg, _, labels = released
    pred = Predictor.load('digits@1.0.0', registry=reg, precision='fp32')
    f = repo/'photos'/'00.png'
    rgb = Image.open(f).convert('RGB')
    forms = {'path': f, 'str': str(f), 'PIL RGB': rgb, 'PIL L': rgb.convert('L'), 'PIL RGBA': rgb.convert('RGBA'),
             'PIL 16-bit': Image.fromarray((np.asarray(rgb.convert('L')).astype(np.uint16) * 257)),
             'numpy HWC uint8': np.asarray(rgb), 'numpy HW float': np.asarray(rgb.convert('L')) / 255.0,
             'tensor CHW uint8': TF.pil_to_tensor(rgb), 'tensor HW float': TF.pil_to_tensor(rgb.convert('L'))[0].float() / 255}
    out = {k: pred(v) for k, v in forms.items()}
    tops = {k: p.top for k, p in out.items()}
    assert set(tops.values()) == {tops['path']}, tops
    # other sizes: non-square and small, mapped back to their own size
    for size in ((40, 25), (300, 200), (17, 17)):
        p = pred(rgb.resize(size))
        assert p.image_size == (size[1], size[0])
    # a batch of mixed forms and sizes is one list, in order
    batch = pred([rgb, np.asarray(rgb.resize((50, 70))), TF.pil_to_tensor(rgb)])
    assert [b.top for b in batch] == [tops['path']] * 3


def test_core_models_predict_names_the_right_digit(released):
    repo, reg, _, labels = released
    r = sh(BIN/'core-models', 'predict', 'digits@1.0.0', 'photos', '--json', '--top-k', '3', '--registry', 'registry', cwd=repo)
    got = json.loads(r.stdout)
    assert len(got) == N_IMAGES
    right = [Path(g['image']).name for g in got if g['top'] == labels[Path(g['image']).name]]
    assert len(right) >= 0.9 * N_IMAGES, (len(right), got[:3])
    assert all(len(g['predictions']) == 3 for g in got)
    # one line an image without --json
    r = cli('predict', 'digits@1.0.0', 'photos/00.png', 'photos/01.png', '--registry', 'registry', cwd=repo)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith('photos/00.png: ') and len(r.stdout.splitlines()) == 2


def test_batch_mode_writes_a_predictions_file(released):
    repo, reg, _, labels = released
    for out in ('predictions.csv', 'out/predictions.json'):
        r = cli('predict', 'digits@v1.0.0', 'photos', '--out', out, '--top-k', '1', '--registry', 'registry', cwd=repo)
        assert r.returncode == 0 and f'predict: wrote {out} ({N_IMAGES} images)' in r.stderr, r.stderr
    rows = (repo/'predictions.csv').read_text().splitlines()
    assert rows[0] == 'image,rank,label,score' and len(rows) == N_IMAGES + 1
    assert rows[1].startswith('photos/00.png,1,')
    j = json.loads((repo/'out'/'predictions.json').read_text())
    assert [Path(x['image']).name for x in j] == sorted(labels)
    assert [x['top'] for x in j] == [r.split(',')[2] for r in rows[1:]]


def test_a_version_is_read_from_its_git_tag(released):
    "The work tree without the version's folder: `name@version` comes from the commit its GTO tag points at."
    repo, reg, _, _ = released
    here = Predictor.load('digits@1.0.0', registry=reg, precision='fp32')(repo/'photos'/'03.png')
    vdir = repo/'registry'/'digits'/'1.0.0'
    aside = repo/'aside'
    shutil.move(vdir, aside)
    try:
        mv = ModelRegistry(repo/'registry', git=True).get('digits', '1.0.0')
        assert mv.source == 'digits@v1.0.0' and mv.usage is not None
        there = Predictor.load('digits@1.0.0', registry=repo/'registry', precision='fp32')(repo/'photos'/'03.png')
    finally: shutil.move(aside, vdir)
    assert there.indices == here.indices and np.allclose(there.scores, here.scores)


def test_an_old_checkpoint_falls_back_to_the_family_default_with_a_note(released, tmp_path):
    repo, reg, _, _ = released
    model = reg.load('digits', '1.0.0')
    old = save_checkpoint(model, epoch=1, path=tmp_path/'old')  # no usage: as checkpoints before issue 16
    assert read_meta(old)['usage'] is None
    with pytest.warns(UsageWarning, match='saved without a Usage'):
        p = Predictor.load(old)
    assert p.usage.source.startswith('fallback: the simple_cnn family default')
    assert p.usage.in_chans == 1 and p(repo/'photos'/'00.png').image_size == (96, 96)


def test_bad_inputs_are_refused_in_one_line(released, tmp_path):
    repo, reg, _, _ = released
    r = sh(BIN/'core-models', 'predict', 'digits@9.9.9', 'photos', '--registry', 'registry', cwd=repo, check=False)
    assert r.returncode == 2 and 'has no version 9.9.9' in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    (tmp_path/'broken.png').write_bytes(b'not a png')
    r = cli('predict', 'digits@1.0.0', str(tmp_path/'broken.png'), '--registry', 'registry', cwd=repo)
    assert r.returncode == 2 and 'not a readable image' in r.stderr, r.stderr
    r = cli('predict', 'digits@1.0.0', str(tmp_path/'empty'), '--registry', 'registry', cwd=repo)
    assert r.returncode == 2 and 'no such image file or folder' in r.stderr, r.stderr
