"""``report_to="tensorboard"``: the event files, read back with TensorBoard's own reader, hold every loss term and
learning rate the trainer used, the evaluation's AP and the drawn predictions of the evaluated model."""
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from trainer_setup import make_data, tiny_config  # noqa: E402

from zoo.engine.trainer import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    return make_data(tmp_path_factory.mktemp("shapes"))


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_event_files(data, tmp_path):
    pytest.importorskip("tensorboard", reason="report_to='tensorboard' needs the tensorboard package (zoo[logging])")
    trainer = Trainer(tiny_config(data, tmp_path, report_to="tensorboard", epochs=1, batch_size=4))
    steps: list[tuple[dict, dict]] = []  # what each step returned, and the lr of each group after it
    train_step = trainer.train_step

    def recording_step(images, targets):
        logs = train_step(images, targets)
        steps.append((logs, {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}))
        return logs

    trainer.train_step = recording_step
    trainer.reporter.score_threshold = 0.0  # draw every query's box: a one-epoch model scores below the default
    metrics = trainer.fit()

    acc = _events(tmp_path / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert len(steps) == 2
    for logs, lrs in steps:
        assert len(logs) > 10  # total, per decoder layer, encoder and denoising terms
        assert {f"train/{k}" for k in logs} | {f"lr/{k}" for k in lrs} <= tags
    assert set(steps[0][1]) == {"backbone", "backbone_no_decay", "rest", "rest_no_decay"}
    for name in steps[0][0]:
        written = [(e.step, e.value) for e in acc.Scalars(f"train/{name}")]
        assert written == [(i + 1, pytest.approx(logs[name], rel=1e-6)) for i, (logs, _) in enumerate(steps)], name
    for name in steps[0][1]:
        written = [(e.step, e.value) for e in acc.Scalars(f"lr/{name}")]
        assert written == [(i + 1, pytest.approx(lrs[name], rel=1e-6)) for i, (_, lrs) in enumerate(steps)], name
    assert [(e.step, e.value) for e in acc.Scalars("val/AP")] == [(2, pytest.approx(metrics["AP"], abs=1e-7))]
    assert {"val/AP50", "epoch/train_loss", "epoch/time_s"} <= tags

    # the images are zoo.draw of the evaluated model's predictions, pixel for pixel (PNG is lossless)
    from zoo.engine.draw import draw

    image_tags = sorted(acc.Tags()["images"])
    val_dir = Path(data["val_images"])
    assert len(image_tags) == 4 and all(t.startswith("predictions/") for t in image_tags)
    for tag in image_tags:
        path = val_dir / tag.split("/", 1)[1]
        (event,) = acc.Images(tag)
        logged = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
        detections = trainer.eval_model.predict(str(path), score_threshold=0.0)
        expected = np.asarray(draw(path, detections))
        assert event.step == 2 and logged.shape == (64, 64, 3) and len(detections) == 30  # 10 queries x 3 classes
        np.testing.assert_array_equal(logged, expected)


def test_report_to_errors(data, tmp_path, monkeypatch):
    from zoo.cli import build_parser
    from zoo.engine.reporting import make_reporter
    from zoo.extras import MissingExtraError

    with pytest.raises(ValueError, match="report_to must be one of none, tensorboard"):
        make_reporter(tiny_config(data, tmp_path, report_to="wandb"))
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'zoo\[logging\]'"):
        make_reporter(tiny_config(data, tmp_path, report_to="tensorboard"))
    args = build_parser().parse_args(["train", "rtdetr_r18vd", "--data", ".", "--report-to", "tensorboard"])
    assert args.report_to == "tensorboard"
    assert build_parser().parse_args(["train", "rtdetr_r18vd", "--data", "."]).report_to == "none"
