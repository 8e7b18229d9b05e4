"""Trainer: determinism, resume exactness, config-hash refusal, dvclive output, detection and segmentation smoke runs."""
import json, os
import pytest, torch
from torch.utils.data import Subset
from core_models import create_model
from core_models.data import DigitsDataset, ShapesDataset, default_transforms
from core_models.settings import seed_everything
from core_models.config import ConfigError
from core_models.training import Trainer, TrainConfig, Callback, EarlyStopping


@pytest.fixture(autouse=True)
def one_thread_in_tmp(one_thread, tmp_path, monkeypatch):
    "Small models train fastest on one thread (tests/conftest.py; much faster on a busy machine); every file goes to tmp_path."
    monkeypatch.chdir(tmp_path)


def digits(n=64, train=True, size=16):
    tfm = default_transforms('classification', train=True, flip=False) if train else None
    return Subset(DigitsDataset('train' if train else 'val', size=size, transform=tfm), range(n))


def model(seed=0, **kw):
    seed_everything(seed)
    return create_model('cnn', backbone='simple_cnn', in_chans=1, num_classes=10, **kw)


def same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class StopAfter(Callback):
    def __init__(self, n): self.n = n
    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.n: trainer.stop_training = True


def test_two_seeded_runs_are_identical():
    cfg = TrainConfig(epochs=1, batch_size=16, seed=3, progress=False)
    a = Trainer(model(dropout=0.2), digits(), config=cfg); a.fit()
    b = Trainer(model(dropout=0.2), digits(), config=cfg); b.fit()
    c = Trainer(model(dropout=0.2), digits(), config=cfg.to_dict() | {'seed': 4}); c.fit()
    assert same(a.model, b.model)
    assert a.history[0]['train_loss'] == b.history[0]['train_loss']
    assert not same(a.model, c.model)


@pytest.mark.parametrize('kw', [dict(), dict(optimizer='sgd', nesterov=True, schedule='cosine', warmup_epochs=0.5,
                                             accumulate=2, grad_clip=1.0, label_smoothing=0.1)], ids=['adamw-onecycle', 'sgd-cosine-accum'])
def test_resume_is_exact(kw):
    "Stop after 2 of 3 epochs, resume in a new trainer: the weights equal those of 3 uninterrupted epochs, bit for bit."
    cfg = TrainConfig(epochs=3, batch_size=16, checkpoint_dir='ckpt', progress=False, **kw)
    train, val = digits(), digits(32, train=False)
    Trainer(model(dropout=0.2), train, val, config=cfg, callbacks=[StopAfter(2)]).fit()
    second = Trainer(model(seed=99, dropout=0.2), train, val, config=cfg)
    assert second.resume() == 2  # loads the checkpoint; fit would do the same
    history = second.fit()
    straight = Trainer(model(dropout=0.2), train, val, config=cfg.to_dict() | {'checkpoint_dir': None})
    straight.fit()
    assert [r['epoch'] for r in history] == [1, 2, 3]
    assert same(second.model, straight.model)
    assert [r['train_loss'] for r in history] == [r['train_loss'] for r in straight.history]
    assert second.optimizer.state_dict()['state'][0]['momentum_buffer' if kw else 'exp_avg'].equal(
        straight.optimizer.state_dict()['state'][0]['momentum_buffer' if kw else 'exp_avg'])
    assert second.scheduler.last_epoch == straight.scheduler.last_epoch == 3 * (4 // cfg.accumulate)


def test_changed_config_does_not_resume(capsys):
    cfg = TrainConfig(epochs=2, batch_size=16, checkpoint_dir='ckpt', progress=False)
    Trainer(model(), digits(), config=cfg).fit()
    capsys.readouterr()
    t = Trainer(model(), digits(), config=cfg.to_dict() | {'lr': 1e-3})
    history = t.fit()
    out = capsys.readouterr().out
    assert 'not resuming' in out and 'train.lr' in out and 'starting fresh' in out
    assert [r['epoch'] for r in history] == [1, 2]
    meta = json.loads((t.checkpoints.last_path / 'meta.json').read_text())
    assert meta['extra']['run_config']['train']['lr'] == 1e-3
    # the same config resumes (nothing left to train), a different dataset does not
    again = Trainer(model(), digits(), config=cfg.to_dict() | {'lr': 1e-3})
    assert again.resume() == 2
    assert Trainer(model(), digits(48), config=cfg.to_dict() | {'lr': 1e-3}).resume() == 0
    assert 'data.train.len' in capsys.readouterr().out
    # resume=False starts fresh too
    assert Trainer(model(), digits(), config=cfg.to_dict() | {'resume': False}).resume() == 0


def test_dvclive_files_and_best_checkpoint(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, live_dir='live', checkpoint_dir='ckpt', progress=False)
    t = Trainer(model(), digits(), digits(32, train=False), config=cfg)
    history = t.fit()
    metrics = json.loads((tmp_path / 'live/metrics.json').read_text())
    assert metrics['step'] == 1
    for k in ('train_loss', 'val_loss', 'val_accuracy', 'lr', 'peak_memory_mb'):
        assert metrics[k] == pytest.approx(history[-1][k])
        rows = (tmp_path / f'live/plots/metrics/{k}.tsv').read_text().splitlines()
        assert rows[0] == f'step\t{k}' and len(rows) == 3
    best = max(history, key=lambda r: (r['val_accuracy'], r['epoch']))
    assert metrics['best_epoch'] == best['epoch'] and metrics['best_val_accuracy'] == pytest.approx(best['val_accuracy'])
    assert not (tmp_path / 'dvc.yaml').exists() and not (tmp_path / 'live/dvc.yaml').exists()
    assert t.checkpoints.best_path.name == f"epoch_{best['epoch']:04d}"
    assert t.load_best() == t.checkpoints.best_path
    assert all(r['peak_memory_mb'] > 0 and r['seconds'] > 0 for r in history)


def test_config_errors():
    with pytest.raises(ConfigError, match='`learning_rate` expected one of the fields'): TrainConfig.resolve({'learning_rate': 0.1})
    with pytest.raises(ConfigError, match='fp16 autocast needs a CUDA device'): Trainer(model(), digits(), precision='fp16', device='cpu')
    class Ranker(torch.nn.Sequential): task = 'ranking'
    with pytest.raises(TypeError, match="says its task is 'ranking' but has no task hooks"): Trainer(Ranker(torch.nn.Flatten()), digits())


def test_early_stopping_and_bf16():
    stop = EarlyStopping('train_loss', patience=1, min_delta=10.0)
    h = Trainer(model(), digits(32), config=TrainConfig(epochs=4, batch_size=16, precision='bf16', channels_last=True), callbacks=[stop]).fit()
    assert len(h) == 2 and stop.stopped_epoch == 2
    assert all(torch.isfinite(torch.tensor(r['train_loss'])) for r in h)


def test_detection_smoke():
    from core_models.architectures.detection import DetectionArchitecture
    from core_models.heads.detector import DetectionHead
    seed_everything(0)
    m = DetectionArchitecture(backbone='simple_cnn', head=DetectionHead(num_classes=3, fpn_channels=16, num_convs=1, in_strides=(4, 8)))
    train, val = ShapesDataset('train', n=8, task='detection'), ShapesDataset('val', n=4, task='detection')
    t = Trainer(m, train, val, config=TrainConfig(epochs=1, batch_size=4, lr=1e-3, progress=False))
    assert t.task == 'detection'
    h = t.fit()
    assert {'train_loss', 'val_loss', 'val_map', 'val_map_50', 'val_map_75', 'val_mar_100'} <= set(h[0])
    assert torch.isfinite(torch.tensor([h[0]['train_loss'], h[0]['val_loss']])).all()
    assert m.training  # evaluation restored the mode it found
    assert t.last_evaluation.class_names == ['circle', 'square', 'triangle']  # 3 head classes = the dataset's 3


def test_segmentation_smoke():
    from core_models.architectures.segmentation import SegmentationArchitecture
    seed_everything(0)
    m = SegmentationArchitecture({'num_classes': 4, 'channels': 16}, backbone='simple_cnn')
    train, val = ShapesDataset('train', n=8, task='segmentation'), ShapesDataset('val', n=4, task='segmentation')
    h = Trainer(m, train, val, config=TrainConfig(epochs=1, batch_size=4, lr=1e-3, progress=False)).fit()
    assert {'train_loss', 'val_loss', 'val_miou', 'val_pixel_acc', 'val_mean_acc'} <= set(h[0])
    assert 0 <= h[0]['val_miou'] <= 1


def test_segmentation_metrics_name_background_and_classes():
    "A 4-class segmenter on ShapesDataset (3 shapes): rows are background + the dataset's classes, also through a Subset."
    from core_models.architectures.segmentation import SegmentationArchitecture
    seed_everything(0)
    m = SegmentationArchitecture({'num_classes': 4, 'channels': 16}, backbone='simple_cnn')
    val = ShapesDataset('val', n=4, size=32, task='segmentation')
    t = Trainer(m, val, config=TrainConfig(epochs=1, batch_size=4, progress=False))
    for ds in (val, Subset(val, range(2))):
        t.evaluate(ds)
        assert t.last_evaluation.class_names == ['background', 'circle', 'square', 'triangle']
        assert '| background |' in t.last_evaluation._repr_markdown_()


def test_classification_metrics_take_the_dataset_classes_through_a_subset():
    t = Trainer(model(), digits(32), config=TrainConfig(epochs=1, batch_size=16, progress=False))
    t.evaluate(digits(20, train=False))
    assert t.last_evaluation.class_names == [str(d) for d in range(10)]


class CheckpointedMLP(torch.nn.Module):
    "The grad-checkpointing contract: `set_grad_checkpointing(enable=True)` switches checkpointing of its blocks."
    task = 'classification'
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(256 if i == 0 else 32, 32), torch.nn.GELU()) for i in range(2))
        self.fc, self.grad_checkpointing, self.calls = torch.nn.Linear(32, 10), False, []
    def set_grad_checkpointing(self, enable=True):
        self.calls.append(enable); self.grad_checkpointing = enable
    def forward(self, x):
        from torch.utils.checkpoint import checkpoint
        x = x.flatten(1)
        for b in self.blocks: x = checkpoint(b, x, use_reentrant=False) if self.grad_checkpointing and self.training else b(x)
        return self.fc(x)


def test_grad_checkpointing_calls_the_model_and_changes_nothing_else():
    runs = []
    for on in (False, True):
        seed_everything(0)
        t = Trainer(CheckpointedMLP(), digits(), config=TrainConfig(epochs=1, batch_size=16, progress=False, grad_checkpointing=on))
        t.fit(); runs.append(t)
    assert runs[0].model.calls == [] and runs[1].model.calls == [True]
    assert same(runs[0].model, runs[1].model)
    assert runs[0].history[0]['train_loss'] == runs[1].history[0]['train_loss']
    assert runs[0].run_config() != runs[1].run_config()  # BatchNorm in a recomputed block updates its statistics twice


def test_grad_checkpointing_refuses_a_model_without_the_method():
    with pytest.raises(ConfigError, match=r'`grad_checkpointing` expected False .* the model, a Sequential, has none'):
        Trainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)), digits(), grad_checkpointing=True)


@pytest.mark.parametrize('kind', ['architecture', 'backbone'])
def test_grad_checkpointing_on_kit_models(kind):
    "A kit architecture (and a bare backbone, a classifier on its own) trained with checkpointed blocks: the same parameters."
    from core_models import create_backbone
    runs = []
    for on in (False, True):
        m = model() if kind == 'architecture' else (seed_everything(0), create_backbone('simple_cnn', in_chans=1, num_classes=10))[1]
        t = Trainer(m, digits(32), config=TrainConfig(epochs=1, batch_size=16, progress=False, grad_checkpointing=on))
        t.fit(); runs.append(t)
    assert (runs[0].model.grad_checkpointing, runs[1].model.grad_checkpointing) == (False, True)
    p0, p1 = dict(runs[0].model.named_parameters()), dict(runs[1].model.named_parameters())
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    assert runs[0].history[0]['train_loss'] == runs[1].history[0]['train_loss']


def test_sync_batchnorm_in_one_process_is_a_noop_with_a_note(capsys):
    m = model()
    t = Trainer(m, digits(32), config=TrainConfig(epochs=1, batch_size=16, progress=False, sync_batchnorm=True))
    assert 'sync_batchnorm=True has no effect in a single process' in capsys.readouterr().out
    assert t.model is m and not any(isinstance(x, torch.nn.SyncBatchNorm) for x in m.modules())
