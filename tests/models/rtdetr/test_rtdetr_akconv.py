"""RT-DETR with an AKConv CCFM: the registered detectors build, run, train (gradients reach the offsets) and export."""
from __future__ import annotations

import io

import pytest
import torch

from zoo.factory import create_model, create_model_from_config
from zoo.layers.akconv import AKConv, C3_AKConv
from zoo.registry import list_models, model_entrypoint

pytestmark = pytest.mark.usefixtures("single_thread")


NAMES = ["rtdetr_mobilenetv3_large_akconv", "rtdetr_r18vd_akconv"]


def test_registered():
    assert sorted(NAMES) == list_models("*akconv*")
    assert all(model_entrypoint(n).__module__ == "zoo.models.rtdetr.model" for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_build_forward_and_backward_reaches_the_offset_convs(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5)
    enc = model.encoder
    assert all(isinstance(m, AKConv) and m.num_param == 5 and m.stride == 2 for m in enc.downsample_convs)
    assert all(isinstance(m, C3_AKConv) for m in [*enc.fpn_blocks, *enc.pan_blocks])
    assert all(not blk.add for m in enc.pan_blocks for blk in m.m)  # YOLOv5 neck: no residual

    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        out = model.eval()(x)
    assert out["pred_logits"].shape == (1, 300, 5) and out["pred_boxes"].shape == (1, 300, 4)
    assert torch.isfinite(out["pred_logits"]).all() and torch.isfinite(out["pred_boxes"]).all()

    out = model.train()(torch.rand(1, 3, 160, 160))  # smaller input for the backward pass (CPU time)
    heads = [out, *out["aux_outputs"], out["enc_outputs"]]
    loss = sum(h["pred_logits"].sigmoid().mean() + h["pred_boxes"].mean() for h in heads)
    loss.backward()
    akconvs = [m for m in model.modules() if isinstance(m, AKConv)]
    assert len(akconvs) == 2 + 4 * 3
    for m in akconvs:
        assert m.p_conv.weight.grad is not None and m.p_conv.weight.grad.abs().sum() > 0


def test_num_param_override_and_config_roundtrip():
    model = create_model("rtdetr_r18vd_akconv", encoder={"downsample_args": {"num_param": 9}})
    assert [m.num_param for m in model.encoder.downsample_convs] == [9, 9]
    rebuilt = create_model_from_config(model.config)
    assert [m.num_param for m in rebuilt.encoder.downsample_convs] == [9, 9]
    assert rebuilt.state_dict().keys() == model.state_dict().keys()


def test_encoder_exports_to_onnx():
    """The AKConv CCFM exports (opset 17) and onnxruntime agrees with PyTorch (relative to the output scale).

    The backbone and decoder are the plain RT-DETR ones; the encoder is what AKConv changes.
    """
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = create_model("rtdetr_r18vd_akconv").eval()

    class Encoder(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, s8: torch.Tensor, s16: torch.Tensor, s32: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(self.encoder([s8, s16, s32]))

    net = Encoder(model.encoder).eval()
    feats = tuple(torch.randn(1, c, 64 // s, 64 // s) for c, s in zip(model.backbone.out_channels, (8, 16, 32)))
    buf = io.BytesIO()
    torch.onnx.export(net, feats, buf, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: f.numpy() for i, f in zip(sess.get_inputs(), feats)})
    with torch.no_grad():
        ref = net(*feats)
    assert len(got) == 3
    for g, r in zip(got, ref):
        scale = r.abs().max()
        torch.testing.assert_close(torch.from_numpy(g) / scale, r / scale, atol=1e-4, rtol=0)
