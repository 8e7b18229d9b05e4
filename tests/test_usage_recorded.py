"""Every saved model records how to use it (issue 16): a model trained in Python, with the data's own normalisation,
predicts from its Trainer checkpoint folder and from the registered version with the training mean/std and class names,
never through the family fallback. Real files: the checkpoint folder, the registry folder and a fresh interpreter."""
import json, subprocess, sys, warnings
import pytest
import torch
from torch.utils.data import Subset, TensorDataset
from torchvision.transforms import v2
from conftest import ROOT

pytestmark = pytest.mark.usefixtures('one_thread')  # tests/conftest.py: one torch thread per test, restored

MEAN, STD = [0.1], [0.3]  # not the family's (0.449, 0.226), not the kit's (0, 1): a fallback can't hit them by chance


def _trained(tmp_path):
    from core_models import create_model
    from core_models.data import DigitsDataset
    from core_models.training import Trainer
    norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    train = Subset(DigitsDataset('train', size=16, transform=norm), range(128))
    model = create_model('cnn', backbone='simple_cnn', in_chans=1, num_classes=10)
    trainer = Trainer(model, train, epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path/'ckpt')
    trainer.fit()
    return trainer


def test_trainer_checkpoint_and_python_registration_predict_with_the_training_usage(tmp_path):
    from core_models.inference import Predictor
    from core_models.usage import UsageWarning
    from core_models.versioning.registry import ModelRegistry
    trainer = _trained(tmp_path)
    folder = trainer.checkpoints.last_path
    usage = json.loads((folder/'meta.json').read_text())['usage']
    assert (usage['mean'], usage['std'], usage['in_chans'], usage['input_size']) == (MEAN, STD, 1, [16, 16])
    assert usage['classes'] == [str(d) for d in range(10)]  # through the Subset

    reg = ModelRegistry(tmp_path/'registry')
    reg.register('digits', '1.0.0', trainer.model)  # the instance, from Python, no usage= or dataset=
    reg.register('digits', '1.1.0', type(trainer.model), checkpoint=folder)
    assert json.loads((reg.root/'digits'/'1.0.0'/'meta.json').read_text())['usage'] == usage

    with warnings.catch_warnings():
        warnings.simplefilter('error', UsageWarning)
        for source in (folder, 'digits@1.0.0', 'digits@1.1.0'):
            p = Predictor.load(source, registry=reg, precision='fp32')
            assert (list(p.usage.mean), list(p.usage.std), p.usage.classes) == (MEAN, STD, usage['classes']), source

    # a fresh interpreter reads the same from the files alone, and warns about nothing
    code = ('import warnings, json, sys\nfrom core_models.inference import Predictor\nfrom core_models.usage import UsageWarning\n'
            'warnings.simplefilter("error", UsageWarning)\n'
            'p = Predictor.load(sys.argv[1], registry=sys.argv[2], precision="fp32")\n'
            'print(json.dumps(p.usage.to_dict()))')
    for source in (str(folder), 'digits@1.0.0'):
        r = subprocess.run([sys.executable, '-c', code, source, str(reg.root)], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout.strip().splitlines()[-1]) == usage


def test_a_stored_crop_for_a_dense_model_is_refused_when_read(tmp_path):
    "A meta.json edited to centre-crop a segmenter's input: loading it names the field, what it expects and what it got."
    from core_models import create_model
    from core_models.config import ConfigError
    from core_models.inference import Predictor
    from core_models.usage import Usage
    from core_models.versioning.checkpoint import save_checkpoint
    seg = create_model('segmentation', backbone='simple_cnn', config=dict(num_classes=3))
    usage = Usage(task='segmentation', classes=['background', 'a', 'b'], input_size=32).to_dict()
    folder = save_checkpoint(seg, path=tmp_path/'seg', usage=usage)
    meta = json.loads((folder/'meta.json').read_text())
    meta['usage'] = {**usage, 'resize': 'shorter_crop', 'crop_pct': 0.875}
    (folder/'meta.json').write_text(json.dumps(meta))  # meta.json is not among the digested files
    with pytest.raises(ConfigError, match="`resize` expected 'stretch' for a segmentation model .* got 'shorter_crop'"):
        Predictor.load(folder, precision='fp32')


def test_data_no_usage_can_describe_is_said_and_recorded_as_none(tmp_path):
    "4-channel images (a Usage is greyscale or RGB): the Trainer trains, warns once, and its checkpoints record no usage."
    from core_models import create_model
    from core_models.training import Trainer
    from core_models.usage import UsageWarning
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(16, 4, 16, 16, generator=g), torch.randint(0, 2, (16,), generator=g))
    model = create_model('cnn', backbone='simple_cnn', in_chans=4, num_classes=2)
    with pytest.warns(UsageWarning, match=r"could not read a Usage .*`in_chans` expected 1 \(greyscale\) or 3 \(RGB\), got 4"):
        trainer = Trainer(model, data, epochs=1, batch_size=8, progress=False, checkpoint_dir=tmp_path/'ckpt')
    trainer.fit()
    assert trainer.usage is None and getattr(model, 'usage', None) is None
    assert json.loads((trainer.checkpoints.last_path/'meta.json').read_text())['usage'] is None
