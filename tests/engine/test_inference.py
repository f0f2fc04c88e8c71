"""Inference paths: reduced precision and autocast in model.predict, the fused copy predict runs, and
prepare_for_inference (what the command line does). Weights: the bundled demo (no network)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchvision.ops import box_iou

import zoo
from zoo.engine.inference import (ALLOCATOR_OPT_OUT, inference_model, model_dtype, parse_dtype,
                                  prepare_for_inference)
from zoo.data.images import Preprocess, load_image
from zoo.engine.predict import run_detector

DEMO, IMAGE = "rtdetr_mobilenetv3_small.shapes_demo", "zoo/assets/shapes_demo.png"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def demo():
    return zoo.create_model(DEMO).eval()


def _assert_same_detections(reference, candidate, min_iou: float = 0.9) -> None:
    """Same count; each reference detection has a candidate of the same label with IoU >= ``min_iou``."""
    assert len(reference) == len(candidate) > 0, (reference.scores, candidate.scores)
    iou = box_iou(reference.boxes, candidate.boxes)
    iou[reference.labels[:, None] != candidate.labels[None, :]] = 0
    assert (iou.max(1).values >= min_iou).all(), iou


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "autocast"])
def test_reduced_precision_finds_the_same_detections(demo, dtype):
    reference = demo.predict(IMAGE, score_threshold=0.5)
    if dtype == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            found = demo.predict(IMAGE, score_threshold=0.5)
    else:
        model = zoo.create_model(DEMO).to(dtype)
        found = model.predict(IMAGE, score_threshold=0.5)
        assert model_dtype(model) == dtype  # predict did not cast the model back
    assert found.boxes.dtype == found.scores.dtype == torch.float32  # postprocessing in float32
    _assert_same_detections(reference, found)


def test_predict_runs_a_fused_copy_and_leaves_the_model_as_it_is(demo):
    model = zoo.create_model(DEMO).eval()
    keys = list(model.state_dict())
    fused = inference_model(model)
    assert fused is not model and fused.deployed and not model.deployed
    assert inference_model(model) is fused  # cached while the weights stay the same
    found = model.predict(IMAGE, score_threshold=0.5)
    assert list(model.state_dict()) == keys and not model.deployed
    assert inference_model(model) is fused
    # the fused copy gives the unfused model's detections (float rounding apart)
    preprocess = Preprocess.from_model(model)
    image = load_image(IMAGE)
    unfused = run_detector(model, preprocess, [preprocess.resize(image)], [tuple(image.shape[1:])],
                           torch.device("cpu"), 0.5, 100)[0]
    torch.testing.assert_close(found.scores, unfused["scores"], rtol=0, atol=1e-5)
    torch.testing.assert_close(found.boxes, unfused["boxes"], rtol=0, atol=1e-3)  # pixels of a 640-wide image
    with torch.no_grad():  # any change to the weights makes a new copy, which sees the change
        model.decoder.dec_score_head[-1].bias.add_(-100.0)
    refreshed = inference_model(model)
    assert refreshed is not fused and len(model.predict(IMAGE, score_threshold=0.5)) == 0
    model.deploy()
    assert inference_model(model) is model  # a deployed model runs as it is


def test_prepare_for_inference_fuses_casts_and_checks_dtype():
    model = prepare_for_inference(zoo.create_model(DEMO).train(), "bf16")
    assert model.deployed and not model.training and model_dtype(model) == torch.bfloat16
    assert len(model.predict(IMAGE, score_threshold=0.5)) > 0
    assert parse_dtype("fp16") == torch.float16 and parse_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'int8'; use one of fp32, bf16, fp16"):
        parse_dtype("int8")


def test_compiled_model_traces_as_one_graph_and_finds_the_same_detections(demo):
    """torch.compile through dynamo with fullgraph=True: no graph break in the forward pass (the eager backend
    skips code generation, which takes minutes on a small CPU; benchmarks/bench_deploy.py times inductor)."""
    torch._dynamo.reset()
    model = prepare_for_inference(zoo.create_model(DEMO), "fp32", compile=True, backend="eager", fullgraph=True)
    _assert_same_detections(demo.predict(IMAGE, score_threshold=0.5), model.predict(IMAGE, score_threshold=0.5))


_FAULTS = """
import resource, torch, zoo
from zoo.engine.inference import tune_cpu_allocator
torch.set_num_threads(1)
model = zoo.create_model("deimv2_atto").deploy()
x = torch.rand(1, 3, 320, 320)
with torch.inference_mode():
    for _ in range(2):
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model(x)
print(tune_cpu_allocator(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the allocator setting is glibc's")
def test_deploy_keeps_freed_activations_for_the_next_call():
    """After deploy(), forward passes reuse the memory that the previous ones freed: a quarter of the page faults
    or fewer (measured: 1.2k vs 9.9k over 5 passes of DEIMv2 Atto at 320), where glibc by default hands the large
    activations back to the kernel and faults them in again on every call; ZOO_CPU_ALLOCATOR=default leaves
    malloc as it was. Each run in a fresh interpreter: the setting is process-wide."""
    def run(env: dict[str, str]) -> tuple[bool, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        return out[-2] == "True", int(out[-1])

    env = {key: value for key, value in os.environ.items() if key != ALLOCATOR_OPT_OUT}
    tuned, tuned_faults = run(env)
    default, default_faults = run(dict(env, **{ALLOCATOR_OPT_OUT: "default"}))
    assert tuned and not default
    assert tuned_faults * 4 <= default_faults, (tuned_faults, default_faults)
