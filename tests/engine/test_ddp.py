"""Multi-process training: ``torchrun --nproc_per_node 2`` with gloo on CPU. After one optimisation step the
parameters must be identical on both ranks and equal (fp32 tolerance) to a single-process step on the same
global batch; so must the (averaged, clipped) gradients, which also checks the all-reduced box normalisation
(Adam's first step alone hides gradient scale). BatchNorm is frozen and denoising/augmentation are off so that
the two runs see the same maths (per-rank BN statistics and per-rank noise are the only legitimate differences)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from trainer_setup import TINY_ARGS, make_data, tiny_config  # noqa: E402

DDP_ARGS = {"encoder": TINY_ARGS["encoder"], "decoder": {**TINY_ARGS["decoder"], "num_denoising": 0}}


def _model():
    from timm.layers import freeze_batch_norm_2d

    from zoo import create_model

    torch.manual_seed(0)
    model = create_model("rtdetr_mobilenetv3_small", num_classes=3, **DDP_ARGS)
    frozen = freeze_batch_norm_2d(model)
    frozen.config, frozen.pretrained_cfg = model.config, model.pretrained_cfg
    return frozen


def _one_step(data_root: Path, out: Path) -> dict[str, torch.Tensor]:
    from zoo.engine.trainer import Trainer

    data = {"train_ann": str(data_root / "train.json"), "train_images": str(data_root / "train")}
    cfg = tiny_config(data, out, model_args=DDP_ARGS, augment=False, multiscale=False, ema_decay=0.0,
                      val_ann=None, val_images=None)
    trainer = Trainer(cfg, model=_model())
    images, targets = next(iter(trainer._loader(0)))
    trainer.train_step(images, targets)
    named = list(trainer.model.named_parameters())
    return {**{k: v.detach().clone() for k, v in named},
            **{f"{k}.grad": v.grad.detach().clone() for k, v in named if v.grad is not None}}


def _worker(data_root: str, out: str) -> None:
    """Runs under torchrun: one step, then compare parameters across ranks and save rank 0's."""
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
    torch.set_num_threads(1)
    make_data(tmp_path / "data", num_train=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(Path(__file__)), str(tmp_path / "data"), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp" / "ddp_params.pt", weights_only=True)

    single = _one_step(tmp_path / "data", tmp_path / "single")  # global batch 4 in one process
    initial = dict(_model().named_parameters())
    assert ddp.keys() == single.keys()
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
    moved = sum(int(not torch.equal(single[k], p)) for k, p in initial.items())
    assert moved > len(initial) // 2  # the step really updated the model
    assert sum(int(k.endswith(".grad")) for k in single) > len(initial) // 2


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
