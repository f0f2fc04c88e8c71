"""RF-DETR under ``torchrun --nproc_per_node 2`` (gloo, CPU): one optimisation step of Group DETR training gives on
both ranks the parameters and gradients of a single-process step on the same global batch, which checks the
criterion's all-reduced normaliser (boxes x groups, clamped after the average, as the official code). A tiny
rfdetr_nano (LayerNorm projector: no per-rank BatchNorm statistics), no augmentation, no EMA."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

#: rfdetr_nano cut down: a 2-block DINOv2-style ViT of width 32 (2 x 2 windows), 2 decoder layers, 3 groups of 10
TINY_RF = {"backbone": {"dim": 32, "depth": 2, "num_heads": 2, "out_indices": [1, 2], "pos_grid": 4},
           "encoder": {"hidden_dim": 32, "num_blocks": 1},
           "decoder": {"hidden_dim": 32, "num_queries": 10, "group_detr": 3, "num_decoder_layers": 2, "sa_heads": 2,
                       "ca_heads": 2, "dim_feedforward": 64}}


def _one_step(data_root: Path, out: Path) -> dict[str, torch.Tensor]:
    from zoo import create_model
    from zoo.engine.trainer import TrainConfig, Trainer

    torch.manual_seed(0)
    model = create_model("rfdetr_nano", num_classes=3, **TINY_RF)
    config = TrainConfig(model="rfdetr_nano", model_args=TINY_RF, data=str(data_root), output_dir=str(out),
                         input_size=64, epochs=1, batch_size=4, num_workers=0, progress=False, augment=False,
                         multiscale=False, ema_decay=0.0, lr=1e-3)
    trainer = Trainer(config, model=model)
    images, targets = next(iter(trainer._loader(0)))
    trainer.train_step(images, targets)
    named = list(trainer.model.named_parameters())
    return {**{k: v.detach().clone() for k, v in named},
            **{f"{k}.grad": v.grad.detach().clone() for k, v in named if v.grad is not None}}


def _worker(data_root: str, out: str) -> None:
    """Runs under torchrun: one step, the same parameters on every rank, rank 0's saved."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    params = _one_step(Path(data_root), Path(out))
    flat = torch.cat([p.flatten() for k, p in params.items() if not k.endswith(".grad")])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        assert all(torch.equal(gathered[0], g) for g in gathered[1:]), "ranks diverged after one step"
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(params, Path(out) / "ddp_params.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_single_process(tmp_path):
    from zoo.data.synthetic import make_synthetic_coco

    torch.set_num_threads(1)
    make_synthetic_coco(tmp_path / "data", "train", 8, seed=0, image_size=64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__)), str(tmp_path / "data"), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "ddp_params.pt", weights_only=True)
    single = _one_step(tmp_path / "data", tmp_path / "single")  # the global batch of 4 in one process
    assert set(ddp) == set(single)
    assert sum(k.endswith(".grad") for k in single) > 100
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
