"Segmentation smoke test: a few training steps on a tiny batch lower the loss; eval output is well formed."
import torch
from core_models.architectures.segmentation import SegmentationArchitecture


def _batch(n=4, size=32):
    "Images with one bright square each (class 1) or dark square (class 2) on noise; masks to match, some ignored."
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g) * 0.2
    y = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        r, c = torch.randint(0, size - 12, (2,), generator=g).tolist()
        cls = 1 + i % 2
        x[i, :, r:r + 12, c:c + 12] = 1.0 if cls == 1 else -1.0
        y[i, r:r + 12, c:c + 12] = cls
    y[:, 0] = 255
    return x, y


def test_segmentation_learns_and_predicts():
    torch.manual_seed(0)
    x, y = _batch()
    model = SegmentationArchitecture({'num_classes': 3, 'channels': 16, 'dice_weight': 0.5}, backbone='simple_cnn')
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    losses = []
    for _ in range(10):
        out = model(x, y)
        assert set(out) == {'loss_ce', 'loss_dice'}
        loss = sum(out.values())
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses

    model.eval()
    with torch.no_grad(): preds = model(list(x))
    assert preds['out'].shape == (4, 3, 32, 32) and preds['out'].dtype == torch.float32
    assert preds['labels'].shape == (4, 32, 32) and preds['labels'].dtype == torch.int64
    assert torch.equal(preds['labels'], preds['out'].argmax(1))
    assert int(preds['labels'].min()) >= 0 and int(preds['labels'].max()) < 3
