"Checks of core_models.data that a notebook lesson would not show: workers, every task's round trip, transforms on masks."
import numpy as np, torch, pytest
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from core_models.data import (DigitsDataset, ShapesDataset, ImageFolderDataset, write_dataset, load_prepared, detection_collate,
                              default_transforms, stratified_split, IGNORE_INDEX, TASKS, SPLITS)


def test_digits_split_ignores_global_rng():
    np.random.seed(123); torch.manual_seed(123)
    a = DigitsDataset('val').indices
    np.random.seed(7); torch.manual_seed(7)
    test = DigitsDataset('val').indices
    assert (a == test).all()
    assert not (stratified_split(np.arange(30) % 3, seed=1)[0] == stratified_split(np.arange(30) % 3, seed=2)[0]).all()


def test_shapes_same_items_in_workers():
    ds = ShapesDataset('val', n=16, task='detection')
    main = list(DataLoader(ds, batch_size=4, collate_fn=detection_collate))
    work = list(DataLoader(ds, batch_size=4, collate_fn=detection_collate, num_workers=2))
    for (x, t), (y, u) in zip(main, work):
        assert torch.equal(x, y)
        assert all(torch.equal(a['boxes'], b['boxes']) and torch.equal(a['labels'], b['labels']) for a, b in zip(t, u))


def test_splits_differ_and_images_are_valid():
    imgs = {s: torch.stack([ShapesDataset(s, n=20, task='segmentation')[i][0] for i in range(20)]) for s in SPLITS}
    for s in SPLITS:
        x = imgs[s]
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        assert torch.allclose(x * 255, (x * 255).round(), atol=1e-3), 'images are 8-bit'
    assert not torch.isclose(imgs['train'][:, None], imgs['val'][None]).flatten(2).all(-1).any()


@pytest.mark.parametrize('task', TASKS)
def test_prepared_round_trip(tmp_path, task):
    kw = dict(task=task, n=12, size=48, ignore_border=(task == 'segmentation'))
    write_dataset('shapes', tmp_path, splits=('test',), **kw)
    p, d = load_prepared('shapes', 'test', tmp_path, task=task), ShapesDataset('test', **kw)
    assert len(p) == len(d) and p.classes == d.classes and p.meta['kwargs'] == kw
    for i in range(len(d)):
        (x, t), (y, u) = p[i], d[i]
        assert torch.equal(x, y) and type(x) is type(y)
        if task == 'detection': assert torch.equal(t['boxes'], u['boxes']) and torch.equal(t['labels'], u['labels'])
        elif task == 'segmentation': assert torch.equal(t, u) and isinstance(t, tv_tensors.Mask)
        elif task == 'multilabel': assert torch.equal(t, u) and t.dtype == torch.float32
        else: assert t == u
        assert p.labels(i) == d.labels(i) or task == 'segmentation'


def test_prepared_files_load_without_pickle(tmp_path):
    out = write_dataset('digits', tmp_path, splits=('val',), size=16)
    data = torch.load(out / 'val.pt', weights_only=True)
    assert data['images'].dtype == torch.uint8 and data['images'].shape == (270, 1, 16, 16)


def test_segmentation_transform_keeps_class_ids():
    tfm = default_transforms('segmentation', train=True, size=100)
    ds = ShapesDataset('train', n=8, task='segmentation', ignore_border=True, transform=tfm)
    for i in range(8):
        img, mask = ds[i]
        assert img.shape == (3, 100, 100) and mask.shape == (100, 100) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_image_folder_rgb(tmp_path):
    from PIL import Image
    pixels = torch.randint(0, 256, (3, 10, 12), dtype=torch.uint8)
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(tmp_path / c / 'x.png')
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ['a', 'b'] and ds[1][1] == 1
    assert torch.equal(ds[0][0], pixels.float() / 255) or torch.allclose(ds[0][0], pixels.float() / 255)
    assert ImageFolderDataset(tmp_path, in_chans=1)[0][0].shape == (1, 10, 12)
