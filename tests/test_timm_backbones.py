"""timm's models as kit backbones (issue 17): for five families (ConvNeXt, a Swin-style NHWC model, a plain ViT, RegNet,
MobileNetV3) the wrapped backbone's maps equal timm's own `features_only` model's with the same weights; a training
step of detection and segmentation on each gives finite losses; without timm the name fails with the install hint;
and `dvc repro` trains with `model.backbone: timm/<name>` in params.yaml, in a temporary copy of the pipeline."""
import json, shutil, subprocess, sys
from pathlib import Path
import pytest, torch, yaml
timm = pytest.importorskip('timm')
from safetensors.torch import save_file
from conftest import ROOT
from core_models import create_backbone, create_model, list_models
from core_models.backbones import TimmBackbone
from core_models.testing import max_abs_diff

# the smallest of each family, at 64 px (the Swin shrunk through timm's own arguments: one block a stage)
FAMILIES = {
    'convnext_atto': {},
    'swin_tiny_patch4_window7_224': dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
    'vit_tiny_patch16_224': dict(img_size=64, depth=4),
    'regnetx_002': {},
    'mobilenetv3_small_050': {},
}
x64 = lambda n=2: torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))


pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored


@pytest.mark.parametrize('name', FAMILIES)
def test_features_equal_timms_features_only_model(name, tmp_path):
    "Weights saved from a wrapped classifier load into timm's own features_only model (timm's file loading) and into ours."
    kw = FAMILIES[name]
    torch.manual_seed(0)
    full = create_backbone(f'timm/{name}', num_classes=7, **kw)
    path = tmp_path/'weights.safetensors'
    save_file({k.removeprefix('model.'): v.contiguous() for k, v in full.state_dict().items()}, path)
    ours = create_backbone(f'timm/{name}', features_only=True, weights=path, **kw).eval()
    theirs = timm.create_model(name, features_only=True, out_indices=ours.out_idx, pretrained=True, num_classes=7,
                               pretrained_cfg_overlay=dict(file=str(path)), **kw).eval()
    with torch.no_grad(): a, b = ours(x64()), theirs(x64())
    if ours.nhwc: b = [t.permute(0, 3, 1, 2) for t in b]  # timm's Swin features are NHWC; the kit's are NCHW
    assert [t.shape[1] for t in a] == ours.feature_info.channels()
    assert max_abs_diff(a, b) <= 1e-6
    assert [64 // t.shape[-1] for t in a] == ours.feature_info.reduction()


@pytest.mark.parametrize('name', FAMILIES)
def test_classifier_is_timms_model(name):
    "Not features_only: forward_features + forward_head (timm's head) give timm's logits; feature maps are NCHW."
    kw = FAMILIES[name]
    torch.manual_seed(0)
    b = create_backbone(f'timm/{name}', num_classes=3, **kw).eval()
    with torch.no_grad():
        f = b.forward_features(x64())
        assert max_abs_diff(b.forward_head(f), b.model(x64())) <= 1e-6
        if f.ndim == 4: assert f.shape[1] == b.num_features  # NCHW, also for Swin
    assert b.pretrained_cfg['timm_model'] == name and b.pretrained_cfg['timm_version'] == timm.__version__


@pytest.mark.parametrize('name', FAMILIES)
def test_detection_and_segmentation_train_step(name):
    from core_models.data import ShapesDataset
    kw = FAMILIES[name]
    ds = ShapesDataset('train', n=2, size=64, task='detection')
    images = torch.stack([ds[i][0].as_subclass(torch.Tensor) for i in range(2)])
    targets = [dict(boxes=ds[i][1]['boxes'].as_subclass(torch.Tensor), labels=ds[i][1]['labels']) for i in range(2)]
    torch.manual_seed(0)
    det = create_model('detection', backbone={'name': f'timm/{name}', **kw}, num_classes=len(ds.classes), fpn_channels=16, num_convs=1)
    seg = create_model('segmentation', backbone={'name': f'timm/{name}', **kw}, num_classes=3, channels=16)
    masks = torch.randint(0, 3, (2, 64, 64))
    for model, tgt in ((det, targets), (seg, masks)):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss = model.training_loss(images, tgt)
        assert torch.isfinite(loss), (name, type(model).__name__, loss)
        opt.zero_grad(); loss.backward(); opt.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
        model.eval()
        with torch.no_grad(): out = model(images)
        assert len(out) == 2


def test_plain_vit_gets_the_kits_pyramid_under_dense_heads():
    b = create_model('detection', backbone={'name': 'timm/vit_tiny_patch16_224', 'img_size': 64, 'depth': 4}, num_classes=3).backbone
    assert b.config.feature_pyramid and b.feature_info.reduction() == [4, 8, 16, 32]
    plain = create_backbone('timm/vit_tiny_patch16_224', img_size=64, depth=8, features_only=True)
    assert plain.out_idx == [1, 3, 5, 7] and plain.feature_info.reduction() == [16] * 4  # the kit ViT's four levels


def test_list_and_unknown_names():
    assert 'timm/convnext_atto' in list_models('timm/convnext*')
    assert not any(n.startswith('timm/') for n in list_models())  # timm's thousand names only on asking for them
    with pytest.raises(KeyError, match='closest: timm/convnext_atto'): create_backbone('timm/convnext_atoo')


def test_without_timm_the_name_gives_the_install_hint(run_python):
    r = run_python("import sys; sys.modules['timm'] = None\n"
                   "import core_models\n"
                   "from core_models import create_backbone\n"
                   "try: create_backbone('timm/convnext_atto')\n"
                   "except ImportError as e: print('ERR', e)\n")
    assert r.returncode == 0, r.stderr
    assert 'ERR' in r.stdout and 'pip install core-models[timm]' in r.stdout, r.stdout


def test_import_core_models_does_not_import_timm(run_python):
    r = run_python("import sys, core_models, core_models.architectures, core_models.widgets.builder\nprint('timm' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == 'False', (r.stdout, r.stderr)


def test_a_version_on_a_timm_backbone_saves_and_loads(tmp_path):
    "The registry rebuilds it from its config (timm's name, arguments and version recorded) and loads its weights."
    from core_models.versioning import ModelRegistry
    from core_models.versioning.checkpoint import save_checkpoint, load_checkpoint
    kw = {k: v for k, v in FAMILIES['swin_tiny_patch4_window7_224'].items() if k != 'img_size'}
    torch.manual_seed(0)  # the image size is the architecture's (it records it; the backbone follows)
    m = create_model('detection', backbone={'name': 'timm/swin_tiny_patch4_window7_224', **kw}, num_classes=3,
                     fpn_channels=16, num_convs=1, img_size=64).eval()
    reg = ModelRegistry(tmp_path/'registry', git=False)
    mv = reg.register(name='det', version='1.0.0', model=m)
    b = mv.config['backbone']
    assert b['name'] == 'timm/swin_tiny_patch4_window7_224' and b['timm_version'] == timm.__version__
    assert b['model_args']['window_size'] == 4
    back = reg.load('det', '1.0.0').eval()
    assert type(back.backbone) is TimmBackbone and back.backbone.model_name == 'swin_tiny_patch4_window7_224'
    with torch.no_grad(): assert max_abs_diff(back.forward_features(x64()), m.forward_features(x64())) == 0
    path = save_checkpoint(m, path=tmp_path/'ckpt')
    again = create_model(**json.loads((path/'meta.json').read_text())['config'])
    load_checkpoint(path, again)
    with torch.no_grad(): assert max_abs_diff(again.eval().forward_features(x64()), m.forward_features(x64())) == 0


def test_another_timm_version_warns(recwarn):
    b = create_backbone('timm/convnext_atto', timm_version='0.9.0')
    assert b.config.timm_version == timm.__version__
    assert any('built with timm 0.9.0' in str(w.message) for w in recwarn)


def test_dvc_repro_trains_a_timm_backbone_from_params(tmp_path):
    "`model.backbone: timm/convnext_atto` in params.yaml: the root pipeline prepares, trains and evaluates (a temporary copy)."
    from test_pipeline import FILES, sh, dvc
    repo = tmp_path/'repo'
    for f in FILES + [p.relative_to(ROOT).as_posix() for p in (ROOT/'core_models').rglob('*.py')]:
        (repo/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT/f, repo/f)
    p = yaml.safe_load((repo/'params.yaml').read_text())
    p['model'].update(backbone='timm/convnext_atto')
    p['train'].update(epochs=1)
    p['data'].update(train_subset=64)
    (repo/'params.yaml').write_text(yaml.safe_dump(p, sort_keys=False))
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    sh('git', 'add', '-A', cwd=repo)
    sh('git', 'commit', '-q', '-m', 'The pipeline on a timm backbone', cwd=repo)
    dvc('repro', cwd=repo)
    meta = json.loads((repo/'models/digits-cnn/meta.json').read_text())
    assert meta['config']['backbone']['name'] == 'timm/convnext_atto'
    assert meta['config']['backbone']['timm_version'] == timm.__version__
    metrics = json.loads((repo/'eval/metrics.json').read_text())
    assert all(isinstance(v, (int, float)) for v in metrics.values() if not isinstance(v, dict)), metrics


def test_pretrained_offline_says_to_pass_a_file(run_python):
    "pretrained=True is timm's download; offline (HF_HUB_OFFLINE) it fails with one line naming weights= instead."
    r = run_python("from core_models import create_backbone\n"
                   "try: create_backbone('timm/convnext_atto', pretrained=True)\n"
                   "except Exception as e: print(type(e).__name__, e)\n", env={'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('WeightsError') and "weights='path/to/model.safetensors'" in r.stdout, r.stdout


def test_a_timm_classifier_exports_to_onnx(tmp_path):
    "The exporter (core_models.export, checked there against eager) takes a model on a timm backbone like any other."
    export = pytest.importorskip('core_models.export', reason='the exporter (issue 16) is not in this checkout yet')
    pytest.importorskip('onnxruntime')
    torch.manual_seed(0)
    m = create_model('cnn', backbone='timm/convnext_atto', num_classes=4, img_size=64).eval()
    e = export.export_model(m, 'onnx', tmp_path/'convnext', record=False)
    assert e.path.is_file() and e.path.suffix == '.onnx'
