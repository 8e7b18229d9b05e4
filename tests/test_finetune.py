"""Issue 15, pretrained weights and fine-tuning, on real photos (scikit-image's bundled photographs cut into class folders
by `core_models.testing.write_photo_folders`): a run fine-tuned from a saved state dict starts from it (its first epoch
beats the same run from scratch), `freeze_epochs` freezes then unfreezes the backbone, `lr_find` suggests a finite rate
inside its range and leaves the model as it was, and the same through `params.yaml` and the `core-models` CLI."""
import json, os, socket, subprocess, sys
from pathlib import Path
import pytest, torch, yaml
from safetensors.torch import save_file, load_file

from core_models import create_model
from core_models.data import open_image_data
from core_models.settings import seed_everything
from core_models.testing import write_photo_folders
from core_models.training import Callback, Trainer, TrainConfig, lr_find

CLI = Path(sys.executable).parent/'core-models'
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'CORE_MODELS_DEVICE': 'cpu'}
FRACTIONS = (0.5, 0.25, 0.25)


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored


@pytest.fixture(scope='module')
def photos(tmp_path_factory) -> Path:
    "Four classes (astronaut, chelsea, coffee, rocket) of 40 JPEG crops at 32 px."
    return write_photo_folders(tmp_path_factory.mktemp('photos')/'photos', n=40, size=32)


@pytest.fixture(scope='module')
def splits(photos):
    return [open_image_data('imagefolder', photos, s, fractions=FRACTIONS) for s in ('train', 'val')]


class BackboneStates(Callback):
    "The backbone's state_dict (weights and BatchNorm statistics) at the end of each epoch."
    def __init__(self): self.states = []
    def on_epoch_end(self, trainer, epoch, metrics):
        self.states.append({k: v.clone() for k, v in trainer.model.backbone.state_dict().items()})


def run(splits, weights=None, epochs=2, callbacks=(), **kw) -> Trainer:
    seed_everything(0)
    model = create_model('cnn', backbone={'name': 'simple_cnn', 'weights': str(weights)} if weights else 'simple_cnn', num_classes=4)
    t = Trainer(model, *splits, callbacks=callbacks, config=TrainConfig(epochs=epochs, batch_size=8, seed=0, progress=False, **kw))
    t.fit()
    return t


@pytest.fixture(scope='module')
def pretrained(splits, tmp_path_factory) -> Path:
    "The backbone of a run trained on the photos, saved as a .safetensors state dict (what a torchvision/timm file is)."
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try: t = run(splits, epochs=6)
    finally: torch.set_num_threads(before)
    f = tmp_path_factory.mktemp('weights')/'photos_backbone.safetensors'
    save_file(t.model.backbone.state_dict(), f)
    return f


def same(a:dict, b:dict) -> bool: return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_finetuning_starts_from_the_saved_state_dict(splits, pretrained):
    scratch = run(splits)
    tuned = run(splits, pretrained, freeze_epochs=1, backbone_lr_mult=0.1)
    first = tuned.history[0]['val_accuracy'], scratch.history[0]['val_accuracy']
    assert first[0] > first[1] + 0.2, f'first-epoch val accuracy: fine-tuned {first[0]:.3f}, from scratch {first[1]:.3f}'


def test_the_model_starts_with_the_files_weights(pretrained):
    model = create_model('cnn', backbone={'name': 'simple_cnn', 'weights': str(pretrained)}, num_classes=4)
    assert same(model.backbone.state_dict(), load_file(pretrained))


def test_freeze_epochs_freezes_the_backbone_then_unfreezes_it(splits, pretrained):
    snaps = BackboneStates()
    t = run(splits, pretrained, epochs=3, callbacks=[snaps], freeze_epochs=2)
    start = load_file(pretrained)
    assert same(snaps.states[0], start) and same(snaps.states[1], start)  # weights and BatchNorm statistics as loaded
    changed = [k for k in start if not torch.equal(snaps.states[2][k], start[k])]
    assert any(k.endswith('conv.weight') for k in changed) and any(k.endswith('running_mean') for k in changed)
    assert [r['phase'] for r in t.history] == ['frozen', 'frozen', 'unfrozen']
    assert all(p.requires_grad for p in t.model.parameters())
    # the head learnt in the frozen epochs: its loss fell while the backbone stood still
    assert t.history[1]['train_loss'] < t.history[0]['train_loss']


def test_the_backbone_lr_multiplier_applies_after_unfreezing(splits, pretrained):
    t = run(splits, pretrained, epochs=2, freeze_epochs=1, backbone_lr_mult=0.1, lr=2e-3)
    peaks = {g['name']: g['max_lr'] for g in t.optimizer.param_groups}  # one-cycle's peak of the unfrozen phase
    assert peaks['head'] == pytest.approx(2e-3) and peaks['backbone'] == pytest.approx(2e-4)


def test_lr_find_suggests_a_finite_lr_inside_its_range_and_leaves_the_model(splits):
    seed_everything(0)
    model = create_model('cnn', backbone='simple_cnn', num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    found = lr_find(model, splits[0], start_lr=1e-6, end_lr=1.0, num_it=30, batch_size=8)
    assert torch.isfinite(torch.tensor(found.suggestion)) and 1e-6 <= found.suggestion <= 1.0
    assert found.lrs == sorted(found.lrs) and found.lrs[0] == pytest.approx(1e-6) and len(found.lrs) <= 30
    assert set(found.suggestions) == {'valley', 'steepest'}
    assert same(model.state_dict(), before) and model.training
    assert torch.equal(torch.get_rng_state(), rng)
    fig = found.plot()
    assert fig.axes[0].get_xscale() == 'log'


# -- through params.yaml and the CLI -----------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def project(tmp_path_factory, photos, pretrained) -> Path:
    "A folder with the photos prepared at 32 px and a params.yaml that fine-tunes from the saved backbone."
    d = tmp_path_factory.mktemp('project')
    params = {'prepare': {}, 'data': {'format': 'imagefolder', 'path': str(photos), 'fractions': list(FRACTIONS), 'size': 32},
              'model': {'architecture': 'cnn', 'backbone': {'name': 'simple_cnn', 'weights': str(pretrained)}},
              'train': {'epochs': 2, 'freeze_epochs': 1, 'backbone_lr_mult': 0.1, 'batch_size': 8, 'seed': 0, 'device': 'cpu'}}
    (d/'params.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    r = subprocess.run([CLI, 'prepare'], cwd=d, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return d


def cli(project, *args, params=None):
    if params is not None: (project/'other.yaml').write_text(yaml.safe_dump(params, sort_keys=False))
    return subprocess.run([CLI, *args, *(['--params', 'other.yaml'] if params is not None else [])], cwd=project, env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_train_fine_tunes_from_the_weights_params_name(project):
    r = cli(project, 'train', '--out', 'models/photos', '--live', 'dvclive/train')
    assert r.returncode == 0, r.stderr
    assert 'phase=unfrozen' in r.stdout
    frozen = (project/'dvclive'/'train'/'plots'/'metrics'/'frozen.tsv').read_text().splitlines()
    assert [l.split('\t')[1] for l in frozen[1:]] == ['1', '0']  # dvclive shows the phase, epoch by epoch
    meta = json.loads((project/'models'/'photos'/'meta.json').read_text())
    assert meta['config']['backbone']['name'] == 'simple_cnn'  # the checkpoint rebuilds without the weights file
    assert 'weights' not in json.dumps(meta['config'])


def test_lr_find_command_prints_the_suggestion_and_writes_the_plot(project):
    r = cli(project, 'lr-find', '--num-it', '20', '--start-lr', '1e-5', '--end-lr', '1')
    assert r.returncode == 0, r.stderr
    assert 'lr-find: suggested lr' in r.stdout and 'eval/plots/lr_find.png' in r.stdout
    assert (project/'eval'/'plots'/'lr_find.png').stat().st_size > 1000


def _online() -> bool:
    try: socket.getaddrinfo('download.pytorch.org', 443); return True
    except OSError: return False


@pytest.mark.skipif(_online(), reason="checks the offline refusal; here torchvision's weights could be downloaded")
def test_torchvision_weights_offline_is_one_line_and_exit_2(project):
    p = yaml.safe_load((project/'params.yaml').read_text())
    p['model']['backbone'] = {'name': 'resnet18', 'weights': 'torchvision'}
    r = cli(project, 'train', '--out', 'models/tv', '--live', 'dvclive/tv', params=p)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'weights="torchvision": could not download' in lines[0] and 'resnet18-' in lines[0], lines
    assert 'Traceback' not in r.stderr and 'Downloading' not in r.stdout


def test_a_weights_file_of_another_model_names_the_file(project, tmp_path):
    other = tmp_path/'wide.safetensors'
    save_file(create_model('cnn', backbone={'name': 'simple_cnn', 'widths': (16, 32, 64)}, num_classes=4).backbone.state_dict(), other)
    p = yaml.safe_load((project/'params.yaml').read_text())
    p['model']['backbone']['weights'] = str(other)
    r = cli(project, 'train', '--out', 'models/x', '--live', 'dvclive/x', params=p)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and 'wide.safetensors' in lines[0] and 'do not fit the model' in lines[0], lines
