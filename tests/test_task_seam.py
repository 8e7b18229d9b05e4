"The task seam (issue 13): the Trainer names no task; a model's hooks decide how it learns and is judged."
import re
import pytest
from pathlib import Path
import torch
from torch.utils.data import Subset
from core_models import create_model
from core_models.data import DigitsDataset, ShapesDataset
from core_models.settings import seed_everything
from core_models.training import Trainer, TrainConfig, evaluate

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored


def test_training_module_names_no_task():
    src = (ROOT / 'core_models/training.py').read_text()
    hits = [l for l in src.splitlines() if re.search(r"'(classification|detection|segmentation|multilabel|multi_label)'", l)]
    assert hits == []


def test_free_evaluate_matches_trainer_evaluate():
    seed_everything(0)
    m = create_model('cnn', num_classes=10, in_chans=1, backbone={'name': 'simple_cnn', 'widths': [8, 16, 32]})
    val = Subset(DigitsDataset('val', size=16), range(40))
    t = Trainer(m, val, config=TrainConfig(epochs=1, batch_size=16, progress=False, device='cpu'))
    a, b = t.evaluate(val), evaluate(m, val, batch_size=16, precision='fp32')  # the trainer evaluates in its fp32
    assert set(a) == {'loss', 'accuracy', 'top5'} and a['accuracy'] == b['accuracy']
    assert abs(a['loss'] - b['loss']) < 1e-6
    assert torch.equal(t.last_evaluation.matrix, b.metric.matrix)


def test_free_evaluate_on_a_segmenter_and_a_detector():
    seed_everything(0)
    seg = create_model('segmentation', backbone='simple_cnn', num_classes=4, channels=16)
    r = evaluate(seg, ShapesDataset('val', n=4, size=32, task='segmentation'), batch_size=2)
    assert {'loss', 'miou', 'pixel_acc', 'mean_acc'} == set(r) and r.metric.class_names[0] == 'background'
    det = create_model('detection', backbone='simple_cnn', num_classes=3, fpn_channels=16, num_convs=1, in_strides=(4, 8))
    r = evaluate(det, ShapesDataset('val', n=4, size=32, task='detection'), batch_size=2)
    assert {'loss', 'map', 'map_50', 'map_75', 'mar_100'} == set(r)


def test_dict_head_receives_shared_config_keys():
    m = create_model(architecture='segmentation', backbone='resnet18', head={'name': 'segmenter', 'decoder': 'aspp'}, num_classes=3)
    assert m.head.config.num_classes == 3 and m.head.config.decoder == 'aspp'


def test_multilabel_task_trains_through_the_unchanged_trainer():
    "A task the Trainer has never heard of: its hooks are the model's, and the run's keys follow them."
    seed_everything(0)
    m = create_model('multilabel', backbone={'name': 'simple_cnn', 'widths': [8, 16, 32]}, num_classes=3)
    train, val = ShapesDataset('train', n=32, size=32, task='multilabel'), ShapesDataset('val', n=16, size=32, task='multilabel')
    t = Trainer(m, train, val, config=TrainConfig(epochs=1, batch_size=16, progress=False, device='cpu'))
    h = t.fit()
    assert {'train_loss', 'val_loss', 'val_map', 'val_f1'} <= set(h[0]) and t.monitor() == ('val_map', 'max')
    assert t.last_evaluation.class_names == ['circle', 'square', 'triangle']
    r = evaluate(m, val, batch_size=8, precision='fp32')  # exactly the trainer's fp32 validation
    assert abs(r['map'] - h[0]['val_map']) < 1e-6


def test_one_weight_decay_rule_for_architectures_and_plain_models():
    from core_models.training import build_optimizer, default_param_groups
    m = create_model('cnn', backbone='simple_cnn', num_classes=3)
    first = next(n for n, p in m.backbone.named_parameters() if p.ndim > 1)
    m.backbone.no_weight_decay = lambda: {first}  # timm's method, names relative to the backbone
    skip = {f'backbone.{first}'}
    for groups in (m.param_groups(1e-3), default_param_groups(m, 1e-3, 0.05)):
        names = {id(p): n for n, p in m.named_parameters()}
        for g in groups:
            for p in g['params']:
                decayed = g['weight_decay'] > 0
                assert decayed == (p.ndim > 1 and names[id(p)] not in skip), (names[id(p)], g['name'])
    opt = build_optimizer(m, TrainConfig(lr=1e-3))
    assert sum(len(g['params']) for g in opt.param_groups) == sum(1 for p in m.parameters() if p.requires_grad)
