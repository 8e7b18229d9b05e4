"""The tutorials' exercises (issue 19): every tutorial opens with what the learner will be able to do, closes with a
recap that links where each piece lives, and has at least two exercises. Each exercise's checker (core_models.
exercises) accepts the reference solution the tutorial keeps in a collapsed cell, run here from the notebook's own
text in a fresh namespace, and rejects a typical wrong answer (a common mistake, written below)."""
import json, re, statistics, hashlib
from pathlib import Path
import pytest, torch
from torch import nn
import torch.nn.functional as F
from conftest import ROOT
from core_models import exercises
from core_models.exercises import EXERCISES

TUTORIALS = ROOT/'nbs'/'tutorials'


def cells(name):
    return json.loads((TUTORIALS/f'{name}.ipynb').read_text())['cells']


def source(c): return ''.join(c['source'])


def solution_cells(name):
    "The collapsed cells (JupyterLab's source_hidden) that hold the reference solutions and call a checker."
    return [c for c in cells(name) if c['cell_type'] == 'code' and c['metadata'].get('jupyter', {}).get('source_hidden')
            and 'check_' in source(c)]


# A typical mistake for each exercise: each must be rejected by its checker.
def _area(x): return (x[:, 2:] - x[:, :2]).prod(-1)
def _iou_no_clamp(a, b):
    lt, rb = torch.max(a[:, None, :2], b[:, :2]), torch.min(a[:, None, 2:], b[:, 2:])
    inter = (rb - lt).prod(-1)
    return inter / (_area(a)[:, None] + _area(b) - inter)
def _nms_unsorted(boxes, scores, t):
    from torchvision.ops import box_iou
    keep, alive = [], torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):                           # in input order, not by score
        if not alive[i]: continue
        keep.append(i); alive &= box_iou(boxes[i:i + 1], boxes)[0] <= t
    return torch.tensor(keep, dtype=torch.long)
def _bf16_truncate(x):
    return (x.view(torch.int32) & ~0xFFFF).view(torch.float32)   # drops the low bits: rounds toward zero
def _freeze_params_only(model):
    for p in model.backbone.parameters(): p.requires_grad_(False)   # BatchNorm statistics still move
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
def _preprocess_w_h(image, usage):
    import torchvision.transforms.v2.functional as TF
    x = TF.resize(image, list(usage.input_size[::-1]), antialias=True)       # (W, H) for (H, W)
    return TF.normalize(x, list(usage.mean), list(usage.std))
def _shard_contiguous(n, w, r):
    per = -(-n // w); idx = list(range(n)) + list(range(n))[:per * w - n]
    return idx[r * per:(r + 1) * per]                     # contiguous blocks, not interleaved
WRONG = {
    'check_accuracy': lambda logits, labels: (logits.argmax(0)[:len(labels)] == labels).float().mean().item(),
    'check_count_params': lambda m: sum(p.numel() for p in m.parameters()),              # counts frozen ones too
    'check_conv_output_size': lambda n, k, s=1, p=0, d=1: (n + 2 * p - k) // s + 1,      # forgets dilation
    'check_conv_params': lambda i, o, k, g=1, b=True: i * o * k * k + (o if b else 0),    # forgets groups
    'check_patchify': lambda x, p: x.unfold(2, p, p).unfold(3, p, p).reshape(x.shape[0], -1, x.shape[1] * p * p),
    'check_attention': lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-1) @ v,         # no 1/sqrt(d)
    'check_gradcam': lambda a, g: (g.mean((1, 2), keepdim=True) * a).sum(0),              # no ReLU
    'check_normalize_map': lambda m: (m - m.min()) / (m.max() - m.min()),                  # nan on a constant map
    'check_box_iou': _iou_no_clamp,
    'check_nms': _nms_unsorted,
    'check_centerness': lambda d: (d[:, [0, 2]].min(1).values / d[:, [0, 2]].max(1).values) *
                                  (d[:, [1, 3]].min(1).values / d[:, [1, 3]].max(1).values),  # no square root
    'check_confusion_matrix': lambda p, t, k: torch.bincount((t.clamp(max=k - 1) * k + p).flatten(), minlength=k * k).view(k, k),
    'check_miou': lambda cm: (cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag())).nan_to_num(0).mean().item(),
    'check_bump_version': lambda v, part: '.'.join(str(int(x) + (i == 'major minor patch'.split().index(part)))
                                                    for i, x in enumerate(v.split('.'))),     # no reset
    'check_file_digest': lambda path: hashlib.md5(Path(path).read_bytes()).hexdigest(),
    'check_bf16_round': _bf16_truncate,
    'check_speed_up': lambda a, b: (sum(a) / len(a)) / (sum(b) / len(b)),                 # means: the outlier counts
    'check_shard': _shard_contiguous,
    'check_scaled_lr': lambda lr, b0, b: lr * (b / b0) ** 0.5,                            # square-root rule
    'check_count_per_class': lambda folder: {d.name: len(list(d.iterdir())) for d in sorted(Path(folder).iterdir())
                                             if d.is_dir()},                              # counts every file
    'check_steepest_lr': lambda lrs, losses: lrs[losses.index(min(losses))],              # the lowest loss
    'check_freeze_backbone': _freeze_params_only,
    'check_preprocess': _preprocess_w_h,
    'check_box_to_image': lambda b, image_size, input_size: b * image_size[0] / input_size[0],  # one scale for x and y
    'check_top_k': lambda logits, classes, k: [(classes[i], v) for v, i in
                                               zip(*[t.tolist() for t in logits.topk(min(k, len(classes)))])],  # logits, no softmax
}


def test_every_checker_has_a_wrong_answer():
    checkers = {f.__name__ for fs in EXERCISES.values() for f in fs}
    assert checkers == set(WRONG), checkers ^ set(WRONG)


@pytest.mark.parametrize('checker', sorted(WRONG))
def test_checker_rejects_a_typical_mistake(checker):
    verdict = getattr(exercises, checker)(WRONG[checker])
    assert not verdict and verdict.failure, verdict
    assert 'expected' in verdict.failure or 'raised' in verdict.failure, verdict.failure


@pytest.mark.parametrize('name', sorted(EXERCISES))
def test_tutorial_has_objectives_and_a_recap(name):
    md = [source(c) for c in cells(name) if c['cell_type'] == 'markdown']
    head = '\n'.join(md[:3])
    assert re.search(r'you will be able to', head, re.I), f'{name}: no objectives ("you will be able to") at the top'
    recap = [s for s in md if re.match(r'##\s+Recap', s)]
    assert recap, f'{name}: no "## Recap" section'
    assert re.search(r'\]\((\.\./)?[\w/.-]+\.ipynb\)', recap[0]), f'{name}: the recap links no page'


@pytest.mark.parametrize('name', sorted(EXERCISES))
def test_reference_solutions_pass_their_checkers(name):
    """Each reference solution, run from the notebook's text in a fresh namespace (torch, nn, F and the checkers, as the
    tutorial's imports give), is accepted by its checker; and Run All left a ✓ on screen for each."""
    sols = solution_cells(name)
    used = {m for c in sols for m in re.findall(r'\b(check_\w+)\(', source(c))}
    expected = {f.__name__ for f in EXERCISES[name]}
    assert expected <= used, f'{name}: no collapsed reference solution for {sorted(expected - used)}'
    for c in sols:
        ns = {'torch': torch, 'nn': nn, 'F': F, **{k: getattr(exercises, k) for k in dir(exercises) if k.startswith('check_')}}
        exec(compile(source(c), f'{name}-solution', 'exec'), ns)
        for checker in re.findall(r'\b(check_\w+)\((\w+)\)', source(c)):
            verdict = getattr(exercises, checker[0])(ns[checker[1]])
            assert verdict, f'{name}: {verdict}'
    outputs = ' '.join(json.dumps(c.get('outputs', [])) for c in sols)
    assert outputs.count('\\u2713') + outputs.count('✓') >= len(expected), f'{name}: Run All does not show a ✓ for each exercise'


def test_exercise_stub_is_left_for_the_learner():
    "The exercise cell before each solution leaves the body to write (a `...`/NotImplementedError stub)."
    for name in EXERCISES:
        cs = cells(name)
        for i, c in enumerate(cs):
            if c in solution_cells(name):
                stub = next(source(s) for s in reversed(cs[:i]) if s['cell_type'] == 'code')
                assert 'NotImplementedError' in stub or '...' in stub, f'{name}: no stub before the solution cell {i}'
