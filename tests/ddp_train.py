"""A tiny training run for tests/test_distributed.py; the same script runs alone or under torchrun.

    python tests/ddp_train.py OUT                                   # one process
    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_train.py OUT   # two (gloo on CPU)

The model has no batch statistics and no dropout (Linear + ReLU on 8x8 digits), so a step of N processes
with batch B/N each computes the same update as one process with batch B, up to float summation order.
Each process writes OUT/rank<R>.pt (its final state_dict) and OUT/history<R>.json; checkpoints and dvclive
logs go to OUT/ckpt_rank<R> and OUT/live_rank<R>, so the test can see that only rank 0 wrote any.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_train.py OUT sync_bn

builds a BatchNorm model with `sync_batchnorm=True` instead, and writes OUT/sync_bn<R>.json: the Trainer's error,
and what torch itself does with a SyncBatchNorm model under DDP on CPU (so the test notices if torch ever allows it).
"""
import json, os, sys
from pathlib import Path
import torch, torch.nn as nn
import torch.distributed as dist
from torch.utils.data import Subset
from core_models.config import ConfigError
from core_models.data import DigitsDataset
from core_models.settings import seed_everything
from core_models.training import Trainer, TrainConfig


class TinyMLP(nn.Sequential):
    task = 'classification'
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def main(out):
    out = Path(out)
    torch.set_num_threads(1)
    rank = int(os.environ.get('RANK', 0))
    seed_everything(0)
    model = TinyMLP()
    train = Subset(DigitsDataset('train', size=8), range(128))
    val = Subset(DigitsDataset('val', size=8), range(50))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer='sgd', schedule='cosine', warmup_epochs=0.5,
                      seed=0, progress=False, checkpoint_dir=str(out / f'ckpt_rank{rank}'), live_dir=str(out / f'live_rank{rank}'))
    trainer = Trainer(model, train, val, config=cfg)
    history = trainer.fit()
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trainer.model.state_dict(), out / f'rank{rank}.pt')
    (out / f'history{rank}.json').write_text(json.dumps({'world_size': trainer.world_size, 'steps_per_epoch': trainer.steps_per_epoch,
                                                        'per_rank_batch': trainer.per_rank_batch, 'history': history}))


class TinyBNNet(nn.Sequential):
    task = 'classification'
    def __init__(self):
        super().__init__(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))


def sync_bn(out):
    out = Path(out)
    rank = int(os.environ.get('RANK', 0))
    train = Subset(DigitsDataset('train', size=8), range(32))
    result = {'trainer_error': None, 'torch_error': None}
    try: Trainer(TinyBNNet(), train, config=TrainConfig(epochs=1, batch_size=16, sync_batchnorm=True, progress=False))
    except ConfigError as e: result['trainer_error'] = str(e)
    result['distributed'] = dist.is_initialized() and dist.get_world_size()
    try:  # torch's own verdict on the same model, without the Trainer
        net = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(TinyBNNet()))
        net(torch.randn(8, 1, 8, 8)).sum().backward()
    except Exception as e: result['torch_error'] = f'{type(e).__name__}: {e}'
    out.mkdir(parents=True, exist_ok=True)
    (out / f'sync_bn{rank}.json').write_text(json.dumps(result))


if __name__ == '__main__':
    sync_bn(sys.argv[1]) if sys.argv[2:] == ['sync_bn'] else main(sys.argv[1])
