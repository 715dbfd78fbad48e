"""DistributedDataParallel: a small model with DLU trains under DDP (gloo, 2 processes on CPU) and
ends where single-process training on the same data ends. Multi-GPU use is the same plain DDP."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dlu_triton

from .tolerance import assert_close

STEPS, WORLD = 3, 2


def model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), dlu_triton.DLU(8, 2, up_kernel=3, compressed_channels=4),
                          nn.Conv2d(8, 3, 3, padding=1)).double()
    x, target = torch.randn(2 * WORLD, 3, 5, 6).double(), torch.randn(2 * WORLD, 3, 10, 12).double()
    return model, x, target


def train(model, x, target):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(STEPS):
        opt.zero_grad()
        (model(x) - target).square().mean().backward()
        opt.step()
    return model


def ddp_worker(rank, rendezvous, result):
    os.environ["TRITON_INTERPRET"] = "0"  # the CPU path: this test is about DDP, not the kernels
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=WORLD)
    model, x, target = model_and_data()
    ddp = nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False: every parameter is used
    shard = slice(2 * rank, 2 * rank + 2)
    train(ddp, x[shard], target[shard])
    if rank == 0:
        torch.save(model.state_dict(), result)
    dist.destroy_process_group()


def test_ddp_matches_single_process_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the workers' path too
    result = tmp_path / "ddp.pt"
    mp.spawn(ddp_worker, args=(str(tmp_path / "rendezvous"), str(result)), nprocs=WORLD)
    model, x, target = model_and_data()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    expected = train(model, x, target).state_dict()
    got = torch.load(result)
    for name, value in expected.items():
        assert not torch.equal(value, initial[name]), f"{name} did not train"
        assert_close(f"DDP {name}", got[name], value)
