"""Fine-tuning options: gradient accumulation equals one big batch, early stopping keeps the best checkpoint,
mosaic / mixup keep every box on its object and stop for the last ``no_aug_epochs``, and ``zoo.train`` on a
YOLO folder returns the trained model and its run folder."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torchvision import tv_tensors

from tests.engine.trainer_setup import TINY_ARGS, make_data, tiny_config
from zoo.data.transforms import MixUp, Mosaic, SampleMixing

pytestmark = pytest.mark.usefixtures("single_thread")


def test_accumulated_batches_equal_one_big_batch(tmp_path):
    """2 accumulated batches of 2 give the gradient and the update of one batch of 4 (float32 rounding).
    BatchNorm is frozen (its batch statistics would differ between batches of 2 and 4) and denoising is off (its
    group count depends on the batch's largest box count); the two halves hold different numbers of boxes, so
    normalising each half by its own box count would not match."""
    from zoo.factory import create_model
    from zoo.layers.norm import freeze_batch_norm

    from zoo.engine.trainer import Trainer

    data = make_data(tmp_path / "d", num_train=8)
    args = {**TINY_ARGS, "decoder": {**TINY_ARGS["decoder"], "num_denoising": 0}}
    torch.manual_seed(0)
    base = freeze_batch_norm(create_model("rtdetr_mobilenetv3_small", num_classes=3, **args))
    common = dict(model_args=args, ema_decay=0, augment=False, multiscale=False, amp="none")
    big = Trainer(tiny_config(data, tmp_path / "a", batch_size=4, **common), model=copy.deepcopy(base))
    small = Trainer(tiny_config(data, tmp_path / "b", batch_size=2, accumulate=2, **common), model=copy.deepcopy(base))
    assert small.steps_per_epoch == big.steps_per_epoch == 2
    images, targets = next(iter(big._loader(0)))
    halves = [(images[:2], targets[:2]), (images[2:], targets[2:])]
    counts = [sum(len(t["labels"]) for t in ts) for _, ts in halves]
    assert counts[0] != counts[1], counts
    big_log = big.train_step(images, targets)
    small_log = small.accumulated_step(halves)
    checked = 0
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        if p.grad is None:
            continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-7, msg=name)
        checked += 1
    assert checked > 50 and all(not torch.equal(p, q) for p, q in zip(big.model.parameters(), base.parameters())
                                if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0)
    # the logged loss is the mean of the halves' losses (each normalised by the average box count), the big one's
    assert small_log["loss"] == pytest.approx(big_log["loss"], rel=1e-5)


def _sample(colour: int, box: list[int], size: tuple[int, int] = (40, 60)) -> tuple:
    image = torch.zeros((3, *size), dtype=torch.uint8)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = colour
    boxes = tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY", canvas_size=size)
    return tv_tensors.Image(image), {"boxes": boxes, "labels": torch.tensor([colour % 3]), "image_id": colour,
                                     "orig_size": torch.tensor(size)}


def test_mosaic_and_mixup_keep_boxes_on_their_objects():
    import random

    random.seed(0)
    samples = [_sample(60 * (k + 1), [5 + k, 4, 30 + k, 20 + 3 * k]) for k in range(4)]
    for _ in range(5):
        image, target = Mosaic(96)(samples)
        assert image.shape == (3, 96, 96) and target["boxes"].canvas_size == (96, 96)
        assert target["labels"].tolist() == [s[1]["labels"].item() for s in samples]
        for k, box in enumerate(target["boxes"].round().int().tolist()):
            x0, y0, x1, y1 = box
            inside = image[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1].float()
            assert inside.numel() and (inside - 60 * (k + 1)).abs().max() <= 2, (k, box)  # resize blurs the rim
            assert image[0, y0 + 1:y1 - 1, x0 + 1:x1 - 1].numel() < 0.5 * image[0].numel()
    a, b = _sample(200, [0, 0, 30, 20]), _sample(100, [10, 10, 50, 40], size=(80, 120))
    image, target = MixUp()([a, b])
    assert image.shape == a[0].shape and target["labels"].tolist() == [200 % 3, 100 % 3]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), torch.tensor([[0., 0., 30., 20.],
                                                                                       [5., 5., 25., 20.]]))
    mixed = image[0, 0, 0].item()  # a's object over b's background: between 0 and 200
    assert 60 < mixed < 140


def test_mosaic_stops_for_the_last_no_aug_epochs(tmp_path):
    from zoo.engine.trainer import Trainer

    data = make_data(tmp_path / "d", num_train=8)
    trainer = Trainer(tiny_config(data, tmp_path / "run", epochs=3, mosaic=1.0, no_aug_epochs=1, augment=False))
    assert isinstance(trainer.train_data, SampleMixing)
    trainer._loader(1)  # epoch 2 of 3: mosaic on, each of 4 images with at least one box
    assert trainer.train_data.enabled
    assert all(len(trainer.train_data[i][1]["labels"]) >= 4 for i in range(4))
    trainer._loader(2)  # the last epoch: the plain resized samples
    assert not trainer.train_data.enabled
    for i in range(4):
        (image, target), (ref_image, ref_target) = trainer.train_data[i], trainer.train_set[i]
        assert torch.equal(image, ref_image) and torch.equal(target["boxes"], ref_target["boxes"])
    with pytest.raises(ValueError, match="mosaic is a probability"):
        Trainer(tiny_config(data, tmp_path / "x", mosaic=2.0))
    with pytest.raises(ValueError, match="accumulate must be a positive int"):
        Trainer(tiny_config(data, tmp_path / "x", accumulate=0))


def test_zoo_train_on_a_yolo_folder_with_early_stopping(tmp_path):
    """lr 0: the validation AP never improves after the first epoch, so patience 1 stops after epoch 2 and the
    best checkpoint (epoch 1) is the one returned."""
    import zoo
    from zoo.data.formats import convert
    from zoo.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "coco", num_train=4, num_val=2, image_size=64)
    convert(tmp_path / "coco", tmp_path / "yolo", "yolo")
    model, run = zoo.train("rtdetr_mobilenetv3_small", data=tmp_path / "yolo", epochs=5, patience=1, lr=0.0,
                           output_dir=tmp_path / "run", model_args=TINY_ARGS, input_size=64, batch_size=2,
                           warmup_steps=1, ema_decay=0, num_workers=0, progress=False, augment=False,
                           multiscale=False)
    assert run == tmp_path / "run" and (run / "best.safetensors").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "val_AP" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert set(epochs[0]["per_class"]) == {"circle", "square", "triangle"}
    assert records[-1]["early_stop"] and records[-1]["best_epoch"] == 1
    assert model.pretrained_cfg["label_names"] == ["circle", "square", "triangle"] and not model.training
    with pytest.raises(TypeError, match="unknown training settings: bogus"):
        zoo.train("rtdetr_mobilenetv3_small", data=tmp_path / "yolo", bogus=1)
