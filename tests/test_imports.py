"""`import core_models` stays cheap: it loads what it needs when a name is first used. Checked as the list of modules a
fresh interpreter has imported (not as a time, which depends on the machine and its load)."""
import json, subprocess, sys
import pytest

HEAVY = ('dvc', 'dvclive', 'gto', 'matplotlib', 'ipywidgets', 'sklearn', 'pandas', 'timm', 'onnx', 'onnxruntime', 'onnxscript',
         'IPython', 'scipy', 'core_models.widgets', 'core_models.cli')

def imported_after(code:str) -> dict:
    "The modules a fresh interpreter holds after `import torch` and then `code`: {'new': [...], 'heavy': [...]}."
    probe = (f'import sys, json, torch\nbefore = set(sys.modules)\n{code}\n'
             f'new = sorted(set(sys.modules) - before)\n'
             f'print(json.dumps({{"new": new, "heavy": [h for h in {HEAVY!r} if h in sys.modules]}}))')
    r = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])

def test_import_core_models_loads_almost_nothing():
    got = imported_after('import core_models')
    assert got['heavy'] == [], got['heavy']
    assert 'torchvision' not in got['new']
    assert len(got['new']) <= 15, got['new']  # core_models, its summary module, the stdlib bits they use

@pytest.mark.parametrize('code', ['from core_models import create_model', 'from core_models import Trainer, evaluate',
                                  'from core_models import create_model; create_model("cnn", backbone="resnet18", num_classes=3)',
                                  'import core_models.precision'])
def test_building_and_training_leave_the_heavy_parts_unloaded(code):
    assert imported_after(code)['heavy'] == []

def test_names_still_resolve_and_the_widgets_load_on_use():
    got = imported_after('import core_models as c\nassert callable(c.summary) and callable(c.create_model)\n'
                         'assert "create_model" in dir(c)\nc.widgets')
    assert 'core_models.widgets' in got['new'] and 'ipywidgets' in got['new']
