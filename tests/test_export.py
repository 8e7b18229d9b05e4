"""Exported models (issue 16): ONNX, torch.export and TorchScript files written beside a registered version (a temporary
git repo) or a checkpoint, recorded in the registry, and run in a fresh interpreter that does not import core_models
(onnxruntime and numpy only): logits and masks within 1e-4 of eager, and the same top boxes for a detector.
"""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest, torch
from conftest import ROOT

from core_models import create_model
from core_models.export import export_model, sample_inputs, ExportError
from core_models.inference import Usage
from core_models.versioning.checkpoint import save_checkpoint
from core_models.versioning.registry import ModelRegistry

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'PATH': f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
       'GIT_AUTHOR_NAME': 'test', 'GIT_AUTHOR_EMAIL': 'test@example.com',
       'GIT_COMMITTER_NAME': 'test', 'GIT_COMMITTER_EMAIL': 'test@example.com'}
DET = dict(num_classes=3, fpn_channels=32, num_convs=1, in_strides=(4, 8), score_thresh=0.02, detections_per_img=20)


def sh(*args, cwd, check=True):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and r.returncode: raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return r


def without_core_models(code:str, cwd:Path) -> dict:
    "Run `code` (which prints one JSON object) in a fresh interpreter; it must not have imported core_models (nor torch)."
    guard = '\nimport sys, json as _j\nprint(_j.dumps({"core_models": "core_models" in sys.modules, "torch": "torch" in sys.modules}))\n'
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(code) + guard], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k != 'PYTHONPATH'})
    assert r.returncode == 0, r.stderr[-3000:]
    result, loaded = (json.loads(l) for l in r.stdout.strip().splitlines()[-2:])
    assert loaded == {'core_models': False, 'torch': False}, loaded
    return result


@pytest.fixture(scope='module')
def repo(tmp_path_factory):
    "A git repo with a registry holding a classifier (digits@1.0.0) and a segmenter (shapes-seg@1.0.0), each with its Usage."
    repo = tmp_path_factory.mktemp('export')/'repo'
    repo.mkdir()
    sh('git', 'init', '-q', '-b', 'main', cwd=repo)
    (repo/'README').write_text('export test\n'); sh('git', 'add', 'README', cwd=repo); sh('git', 'commit', '-q', '-m', 'init', cwd=repo)
    torch.manual_seed(0)
    reg = ModelRegistry(repo/'registry', git=True)
    clf = create_model('cnn', backbone='simple_cnn', head='classifier', config=dict(num_classes=10, in_chans=1)).eval()
    ck = save_checkpoint(clf, epoch=1, path=repo/'ckpt'/'digits',
                         usage=Usage(task='classification', classes=list('0123456789'), in_chans=1, input_size=32).to_dict())
    reg.register('digits', '1.0.0', 'cnn', checkpoint=ck)
    seg = create_model('segmentation', backbone='simple_cnn', config=dict(num_classes=4)).eval()
    ck = save_checkpoint(seg, epoch=1, path=repo/'ckpt'/'seg',
                         usage=Usage(task='segmentation', classes=['background', 'a', 'b', 'c'], input_size=(48, 64)).to_dict())
    reg.register('shapes-seg', '1.0.0', 'segmentation', checkpoint=ck)
    return repo, reg


def _parity_in_fresh_process(e, usage:Usage, model, tmp:Path, seg=False) -> float:
    x = sample_inputs(usage, 3, seed=11)
    with torch.no_grad(): ref = model(torch.from_numpy(x))
    ref = (ref['out'] if seg else ref).numpy()
    np.save(tmp/'x.npy', x); np.save(tmp/'ref.npy', ref)
    got = without_core_models(f'''
        import json, numpy as np, onnxruntime as ort
        spec = json.load(open({str(e.spec_path)!r}))
        s = ort.InferenceSession({str(e.path)!r}, providers=["CPUExecutionProvider"])
        (out,) = s.run(None, {{spec["input"]["name"]: np.load("x.npy")}})
        print(json.dumps({{"diff": float(np.abs(out - np.load("ref.npy")).max()), "shape": list(out.shape)}}))''', tmp)
    assert got['shape'] == list(ref.shape)
    return got['diff']


def test_classifier_to_onnx_beside_the_version_recorded_and_committed(repo, tmp_path):
    repo, reg = repo
    e = export_model('digits@1.0.0', 'onnx', registry=reg)
    vdir = reg.root/'digits'/'1.0.0'
    assert e.path == vdir/'model.onnx' and e.spec_path == vdir/'model.onnx.json'
    spec = json.loads(e.spec_path.read_text())
    assert spec['input'] == {'name': 'images', 'shape': ['batch', 1, 32, 32], 'dtype': 'float32', 'layout': 'NCHW'}
    assert spec['preprocessing']['mean'] == [0.0] and spec['classes'] == list('0123456789')
    assert spec['parity']['passed'] and spec['parity']['max_abs_diff'] <= 1e-4
    recorded = reg.exports('digits', '1.0.0')['onnx']
    assert recorded['sha256'] == spec['sha256'] and recorded['files'] == ['model.onnx', 'model.onnx.json']
    log = sh('git', 'log', '-1', '--name-only', '--format=%s', cwd=repo).stdout
    assert 'Export digits v1.0.0 as onnx' in log and 'registry/digits/1.0.0/model.onnx' in log and 'exports.json' in log
    diff = _parity_in_fresh_process(e, Usage.from_dict(reg.get('digits', '1.0.0').usage), reg.load('digits', '1.0.0'), tmp_path)
    assert diff <= 1e-4


def test_segmenter_to_onnx_parity_without_core_models(repo, tmp_path):
    repo, reg = repo
    e = export_model('shapes-seg@1.0.0', 'onnx', registry=reg)
    assert e.spec['outputs'][0]['shape'] == ['batch', 4, 48, 64]
    diff = _parity_in_fresh_process(e, Usage.from_dict(reg.get('shapes-seg').usage), reg.load('shapes-seg', '1.0.0'), tmp_path, seg=True)
    assert diff <= 1e-4


def test_detector_to_onnx_gives_the_same_top_boxes_without_core_models(tmp_path):
    torch.manual_seed(0)
    det = create_model('detection', backbone='simple_cnn', config=DET).eval()
    usage = Usage(task='detection', classes=['circle', 'square', 'triangle'], input_size=64)
    ck = save_checkpoint(det, epoch=1, path=tmp_path/'det', usage=usage.to_dict())
    e = export_model(ck, 'onnx')
    assert e.path == tmp_path/'det-export'/'model.onnx' and (e.path.parent/'postprocess.py').is_file()
    x = sample_inputs(usage, 2, seed=5)
    with torch.no_grad(): ref = det(torch.from_numpy(x))
    assert all(len(r['boxes']) >= 5 for r in ref)
    np.save(tmp_path/'x.npy', x)
    got = without_core_models(f'''
        import json, sys, numpy as np, onnxruntime as ort
        sys.path.insert(0, {str(e.path.parent)!r})
        from postprocess import decode_detections
        spec = json.load(open({str(e.spec_path)!r}))
        s = ort.InferenceSession({str(e.path)!r}, providers=["CPUExecutionProvider"])
        scores, boxes = s.run(None, {{"images": np.load("x.npy")}})
        pp = {{k: v for k, v in spec["postprocessing"].items() if k != "function"}}
        dets = decode_detections(scores, boxes, **pp)
        print(json.dumps([{{k: v[:5].tolist() for k, v in d.items()}} for d in dets]))''', tmp_path)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g['boxes'], r['boxes'][:5].numpy(), atol=1e-3)
        assert g['labels'] == r['labels'][:5].tolist()
        np.testing.assert_allclose(g['scores'], r['scores'][:5].numpy(), atol=1e-5)


@pytest.mark.parametrize('fmt', ['torch.export', 'torchscript'])
def test_torch_formats_load_without_the_model_code(repo, tmp_path, fmt):
    repo, reg = repo
    e = export_model('shapes-seg@1.0.0', fmt, registry=reg)
    assert e.spec['parity']['passed'] and e.spec['parity']['max_abs_diff'] <= 1e-4
    assert fmt in reg.exports('shapes-seg', '1.0.0')
    x = sample_inputs(Usage.from_dict(reg.get('shapes-seg').usage), 2, seed=3)
    with torch.no_grad(): ref = reg.load('shapes-seg', '1.0.0')(torch.from_numpy(x))['out'].numpy()
    np.save(tmp_path/'x.npy', x); np.save(tmp_path/'ref.npy', ref)
    load = 'torch.export.load(p).module()' if fmt == 'torch.export' else 'torch.jit.load(p)'
    code = f'''
import json, sys, numpy as np, torch
p = {str(e.path)!r}
m = {load}
out = m(torch.from_numpy(np.load("x.npy"))).detach().numpy()
print(json.dumps({{"diff": float(np.abs(out - np.load("ref.npy")).max()), "core_models": "core_models" in sys.modules}}))'''
    r = subprocess.run([sys.executable, '-W', 'ignore', '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {'diff': got['diff'], 'core_models': False} and got['diff'] <= 1e-4


def test_core_models_export_command(repo):
    repo, reg = repo
    r = sh(BIN/'core-models', 'export', 'digits@1.0.0', '--format', 'torchscript', '--registry', 'registry', cwd=repo)
    assert 'export: wrote' in r.stdout and 'model.torchscript.pt' in r.stdout
    assert 'torchscript' in reg.exports('digits', '1.0.0')
    r = sh(BIN/'core-models', 'export', 'digits@1.0.0', '--format', 'tflite', cwd=repo, check=False)
    assert r.returncode == 2 and "invalid choice: 'tflite'" in r.stderr
    r = sh(BIN/'core-models', 'export', 'nope@1.0.0', '--registry', 'registry', cwd=repo, check=False)
    assert r.returncode == 2 and "no model named 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
