"Metrics vs the reference implementations: COCO mAP vs pycocotools on random scenes, IoU and confusion vs scikit-learn."
import contextlib, io
import numpy as np, pytest, torch
from sklearn import metrics as skm
from core_models.metrics import (MeanAveragePrecision, to_coco_format, ConfusionMatrix, SegmentationMetrics,
                                 accuracy, topk_accuracy, confusion_matrix, mean_iou, pixel_accuracy,
                                 match_detections, COCO_IOU_THRESHOLDS, COCO_RECALL_THRESHOLDS)

pytest.importorskip('pycocotools')
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

TOL = 1e-6


def coco_eval(preds, targets):
    "The official evaluator on the same data: (stats, per-category AP @[.5:.95] by category id)."
    gt_dataset, dets = to_coco_format(preds, targets)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(); gt.dataset = gt_dataset; gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType='bbox')
        ev.evaluate(); ev.accumulate(); ev.summarize()
    prec = ev.eval['precision'][:, :, :, 0, -1]  # area 'all', maxDets 100
    per_class = {c: (prec[:, :, k].mean() if (prec[:, :, k] > -1).all() else -1.0) for k, c in enumerate(ev.params.catIds)}
    return ev.stats, per_class


def scene(seed, n_images=8, num_classes=4, max_gt=7, max_fp=4, size=200., dup_gt=False, tied_scores=False,
          n_crowd_fp=0):
    "Random gt boxes; predictions = jittered gt (some twice, some missed) + false positives, some of a class without gt."
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g)
    preds, targets = [], []
    for i in range(n_images):
        n = int(torch.randint(0, max_gt, (), generator=g))
        xy, wh = rand(n, 2) * size, 4 + rand(n, 2) * 60
        gt = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(0, num_classes - 1, (n,), generator=g)
        if dup_gt and n:  # exact duplicate gt boxes: equal IoUs, COCO's tie rule decides
            gt, labels = torch.cat([gt, gt[:1]]), torch.cat([labels, labels[:1]])
        found = rand(len(gt)) < 0.8
        again = found & (rand(len(gt)) < 0.3)
        hits = torch.cat([gt[found], gt[again]])
        hits = hits + torch.randn(hits.shape, generator=g) * 0.1 * (hits[:, 2:] - hits[:, :2]).repeat(1, 2)
        nfp = int(torch.randint(0, max_fp, (), generator=g)) + (n_crowd_fp if i == 0 else 0)
        fxy = rand(nfp, 2) * size
        fp = torch.cat([fxy, fxy + 4 + rand(nfp, 2) * 60], 1)
        fp_labels = torch.randint(0, num_classes, (nfp,), generator=g)
        if i == 0 and n_crowd_fp: fp_labels[:n_crowd_fp] = 0  # > 100 detections of one class in one image
        scores = torch.cat([0.3 + 0.7 * rand(len(hits)), 0.7 * rand(nfp)])
        if tied_scores: scores = (scores * 5).round() / 5
        preds.append(dict(boxes=torch.cat([hits, fp]), scores=scores,
                          labels=torch.cat([labels[found], labels[again], fp_labels])))
        targets.append(dict(boxes=gt, labels=labels))
    return preds, targets


def compare(preds, targets, batch=3):
    m = MeanAveragePrecision()
    for i in range(0, len(preds), batch): m.update(preds[i:i + batch], targets[i:i + batch])
    ours = m.compute()
    stats, per_class = coco_eval(preds, targets)
    diffs = [ours['map'] - stats[0], ours['map_50'] - stats[1], ours['map_75'] - stats[2], ours['mar_100'] - stats[8]]
    diffs += [a - per_class.get(c, -1.0) for c, a in zip(ours['classes'], ours['map_per_class'])]
    return max(abs(d) for d in diffs), ours, stats


SEEDS = range(20)
_ERRS = []


@pytest.mark.parametrize('seed', SEEDS)
def test_map_matches_pycocotools(seed):
    err, ours, stats = compare(*scene(seed))
    _ERRS.append(err)
    assert err < TOL, (err, ours, stats)


@pytest.mark.parametrize('seed', range(5))
def test_map_matches_pycocotools_hard_cases(seed):
    "Tied scores, duplicate gt boxes (tied IoUs), more classes, tiny boxes (low IoU)."
    for kw in (dict(tied_scores=True), dict(dup_gt=True), dict(num_classes=8, n_images=12, max_gt=10, max_fp=8),
               dict(size=40.)):
        err, ours, stats = compare(*scene(seed, **kw))
        assert err < TOL, (kw, err, ours, stats)


def test_max_detections_per_image_and_class():
    "Over 100 detections of one class in one image: COCO keeps the 100 best scored per image and class."
    preds, targets = scene(7, n_images=4, n_crowd_fp=150)
    assert (preds[0]['labels'] == 0).sum() > 100
    err, ours, stats = compare(preds, targets)
    assert err < TOL, (err, ours, stats)


def test_empty_images_and_no_predictions():
    preds, targets = scene(3, n_images=6)
    targets[1] = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))
    preds[2] = dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))
    err, ours, stats = compare(preds, targets)
    assert err < TOL
    no_dets = [dict(boxes=torch.zeros(0, 4), scores=torch.zeros(0), labels=torch.zeros(0, dtype=torch.int64))] * len(targets)
    r = MeanAveragePrecision().update(no_dets, targets).compute()
    assert r['map'] == r['map_50'] == r['mar_100'] == 0.0


def test_perfect_and_no_ground_truth():
    _, targets = scene(1)
    perfect = [dict(boxes=t['boxes'], scores=torch.linspace(1, 0.5, len(t['labels'])), labels=t['labels']) for t in targets]
    r = MeanAveragePrecision().update(perfect, targets).compute()
    assert r['map'] == pytest.approx(1.0, abs=1e-12) and r['mar_100'] == 1.0  # COCO's precision is tp / (tp + fp + eps)
    preds, _ = scene(1)
    empty = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64))] * len(preds)
    r = MeanAveragePrecision().update(preds, empty).compute()
    assert r['map'] == -1.0 and all(a == -1.0 for a in r['map_per_class'])


def test_batching_and_reset_do_not_change_result():
    preds, targets = scene(11, n_images=10)
    one = MeanAveragePrecision().update(preds, targets).compute()
    m = MeanAveragePrecision()
    m.update(preds[:2], targets[:2]); m.reset()
    for p, t in zip(preds, targets): m.update([p], [t])
    assert m.compute() == one


def test_class_names_name_the_table_not_the_numbers():
    preds, targets = scene(5)
    names = ['car', 'person', 'bike', 'dog']
    named = MeanAveragePrecision(class_names=names).update(preds, targets)
    assert named.compute() == MeanAveragePrecision().update(preds, targets).compute()
    rows = [l.split('|')[1].strip() for l in named._repr_markdown_().splitlines() if l.startswith('| ') and l != '| class | boxes | AP |']
    assert rows == [names[c] for c in named.compute()['classes']] and len(rows) == 4
    with pytest.raises(ValueError, match=r"\['labels'\]: expected values in 0..1 \(the ids of the 2 class_names\), got \d+..\d+"):
        MeanAveragePrecision(class_names=names[:2]).update(preds, targets)


def test_thresholds_are_numpys():
    assert (COCO_IOU_THRESHOLDS.numpy() == np.linspace(.5, .95, 10)).all()
    assert (COCO_RECALL_THRESHOLDS.numpy() == np.linspace(0, 1, 101)).all()


def test_match_ties_take_last_gt():
    tp = match_detections(torch.tensor([[0.7, 0.7], [0.6, 0.9]]), torch.tensor([0.5, 0.65]))
    # det 0 takes gt 1 (the last of two equal IoUs), so det 1 is left with gt 0 at IoU 0.6: a hit at 0.5 only
    assert tp.tolist() == [[True, True], [True, False]]


def test_bad_detection_input():
    m = MeanAveragePrecision()
    t = [dict(boxes=torch.zeros(1, 4), labels=torch.zeros(1, dtype=torch.int64))]
    with pytest.raises(ValueError, match=r"predictions\[0\]\['boxes'\]: expected a tensor of shape \(N, 4\)"):
        m.update([dict(boxes=torch.zeros(2, 5), scores=torch.zeros(2), labels=torch.zeros(2))], t)
    with pytest.raises(ValueError, match='expected a dict with keys'):
        m.update([dict(boxes=torch.zeros(2, 4), labels=torch.zeros(2))], t)
    with pytest.raises(ValueError, match='one prediction per target image'):
        m.update([], t)


@pytest.mark.parametrize('seed', range(3))
def test_classification_vs_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    logits, y = torch.randn(500, 7, generator=g), torch.randint(0, 7, (500,), generator=g)
    y_hat = logits.argmax(1)
    assert abs(accuracy(logits, y).item() - skm.accuracy_score(y, y_hat)) < 1e-7
    assert abs(topk_accuracy(logits, y, k=3).item() - skm.top_k_accuracy_score(y, logits, k=3, labels=range(7))) < 1e-7
    assert (confusion_matrix(y_hat, y, 7).numpy() == skm.confusion_matrix(y, y_hat, labels=range(7))).all()
    cm = ConfusionMatrix(7)
    for lb, yb in zip(logits.split(64), y.split(64)): cm.update(lb, yb)
    p, r, f, s = skm.precision_recall_fscore_support(y, y_hat, labels=range(7), zero_division=0)
    for ours, ref in ((cm.precision, p), (cm.recall, r), (cm.f1, f), (cm.support, s)):
        assert np.allclose(ours.numpy(), ref, atol=1e-12)


def test_never_predicted_class_scores_zero():
    cm = ConfusionMatrix(3).update(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]))
    assert cm.precision.tolist() == [0.5, 1.0, 0.0] and cm.f1[2].item() == 0.0


@pytest.mark.parametrize('seed', range(3))
def test_segmentation_vs_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    preds = torch.randint(0, 4, (3, 16, 16), generator=g)
    masks = torch.randint(0, 4, (3, 16, 16), generator=g)
    masks[torch.rand(masks.shape, generator=g) < 0.2] = 255
    miou, iou = mean_iou(preds, masks, 6)
    keep = masks != 255
    ref = skm.jaccard_score(masks[keep], preds[keep], labels=range(4), average=None)
    assert np.allclose(iou[:4].numpy(), ref, atol=1e-12) and iou[4:].isnan().all()
    assert abs(miou - ref.mean()) < 1e-12
    assert abs(pixel_accuracy(preds, masks) - skm.accuracy_score(masks[keep], preds[keep])) < 1e-12
    seg = SegmentationMetrics(6)
    for p, m in zip(preds, masks): seg.update(p[None], m[None])
    r = seg.compute()
    assert abs(r['miou'] - miou) < 1e-12 and abs(r['pixel_acc'] - pixel_accuracy(preds, masks)) < 1e-7
    seg.reset(); assert seg.matrix.sum() == 0


def test_iou_class_only_predicted_counts():
    "A class predicted but never labelled has IoU 0 (present), one absent from both is excluded."
    miou, iou = mean_iou(torch.tensor([[0, 1]]), torch.tensor([[0, 0]]), 3)
    assert iou[0] == 0.5 and iou[1] == 0.0 and iou[2].isnan() and miou == 0.25


def test_report_max_diff(capsys):
    "Prints the largest |ours - pycocotools| of the seeded scenes above (run with -s); reruns them if run alone."
    worst = max(_ERRS) if len(_ERRS) == len(SEEDS) else max(compare(*scene(s))[0] for s in SEEDS)
    with capsys.disabled(): print(f'\nmax |diff| vs pycocotools (mAP, mAP50, mAP75, AR100, per-class AP) over {len(SEEDS)} seeds: {worst:.3e}')
    assert worst < TOL
