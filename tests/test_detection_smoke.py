"Smoke test of the detector end to end: a few training steps on a tiny batch of shapes lower the loss, eval output is well formed."
import torch
from core_models.data import ShapesDataset
from core_models.heads.detector import DetectionHead
from core_models.architectures.detection import DetectionArchitecture


def _batch(n=4, size=64):
    ds = ShapesDataset('train', n=n, size=size, task='detection')
    items = [ds[i] for i in range(n)]
    images = torch.stack([im.as_subclass(torch.Tensor) for im, _ in items])
    targets = [dict(boxes=t['boxes'].as_subclass(torch.Tensor), labels=t['labels']) for _, t in items]
    return (images - 0.5) / 0.25, targets, len(ds.classes)


def test_detector_trains_and_predicts():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is as fast, and doesn't stall when other jobs share the CPU
    try: _train_and_predict()
    finally: torch.set_num_threads(threads)


def _train_and_predict():
    torch.manual_seed(0)
    images, targets, num_classes = _batch()
    head = DetectionHead(num_classes=num_classes, fpn_channels=32, num_convs=1, in_strides=(4, 8))
    model = DetectionArchitecture(backbone='simple_cnn', head=head)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    model.train()
    for _ in range(25):
        losses = model(images, targets)
        assert set(losses) == {'loss_cls', 'loss_box', 'loss_ctr'}
        assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
        loss = sum(losses.values())
        opt.zero_grad(); loss.backward(); opt.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3, totals

    model.eval()
    with torch.no_grad(): preds = model(images)
    assert len(preds) == len(images)
    for p in preds:
        assert set(p) == {'boxes', 'scores', 'labels'}
        n = len(p['scores'])
        assert p['boxes'].shape == (n, 4) and p['boxes'].dtype == torch.float32
        assert p['scores'].shape == (n,) and ((p['scores'] >= 0) & (p['scores'] <= 1)).all()
        assert p['labels'].shape == (n,) and p['labels'].dtype == torch.int64 and (p['labels'] < num_classes).all()
        assert (p['boxes'][:, 2:] >= p['boxes'][:, :2]).all() and (p['boxes'] >= 0).all() and (p['boxes'] <= 64).all()
    assert sum(len(p['scores']) for p in preds) > 0

    # predict is decode (candidates above score_thresh, before NMS) then suppress (class-wise NMS, top-k)
    with torch.no_grad():
        feats = model.forward_features(images)
        pyramid = head.pyramid(feats)
        dense = head.forward_dense(feats)
        candidates = head.decode(dense, images.shape[-2:])
    assert list(pyramid) == ['p2', 'p3'] and [p.shape[1] for p in pyramid.values()] == [32, 32]
    assert dense['level_sizes'] == [p.shape[-2] * p.shape[-1] for p in pyramid.values()]
    for c, p in zip(candidates, head.suppress(candidates)):
        assert (c['scores'] > head.config.score_thresh).all() and len(c['scores']) >= len(p['scores'])
    for c, p in zip(head.suppress(candidates), preds):
        assert all(torch.equal(c[k], p[k]) for k in ('boxes', 'scores', 'labels'))
