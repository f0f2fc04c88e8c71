"""Sharded evaluation and batch inference: ``torchrun --nproc_per_node 2`` (gloo, CPU) against one process, on the
synthetic shapes with image counts that do not divide evenly, through the ``zoo`` command line with the bundled
demo weights. Results must be identical: shards are whole single-process batches, so no bit may differ.

``zoo eval`` runs as ``torchrun -m zoo`` (the command joins and leaves its own process group). The predict jobs
and the exit check share one launch (:func:`two_rank_jobs`: three interpreters instead of three per job): each rank
joins the group with zoo's ``init_distributed`` and runs the jobs in turn as ``python -m zoo`` runs them (the
module ``zoo`` as ``__main__``), inside that group (gloo cannot join a second default group in one process)."""
from __future__ import annotations

import contextlib
import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.cli import main
from zoo.engine.distributed import shard_range

MODEL = "rtdetr_mobilenetv3_small.shapes_demo"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("num_shards", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_shards_cover_every_item_once_in_whole_batches(num_shards, batch_size):
    for num_items in range(0, 23):
        shards = [shard_range(num_items, batch_size, s, num_shards) for s in range(num_shards)]
        assert [i for r in shards for i in r] == list(range(num_items))  # in order, none dropped or repeated
        assert all(r.start % batch_size == 0 for r in shards)  # single-process batch boundaries
        batches = [-(-len(r) // batch_size) for r in shards]
        assert max(batches) - min(batches) <= 1


def test_shard_of_a_bad_request_raises():
    with pytest.raises(ValueError, match="invalid shard 2 of 2"):
        shard_range(10, 1, 2, 2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node N ARGS`` (a script or ``-m module``, and its arguments) with gloo on CPU;
    fails the test on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """11 synthetic images: 3 batches of 4 (4 + 4 + 3) over 2 ranks is uneven in batches and in images."""
    from zoo.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_coco(root, "val", 11, seed=5, image_size=96)
    return root


def _eval_args(shapes: Path) -> list[str]:
    return ["eval", MODEL, "--ann", str(shapes / "val.json"), "--images", str(shapes / "val"), "--batch-size", "4",
            "--workers", "0", "--device", "cpu"]


def _predict_args(out: Path) -> list[str]:
    return ["--out", str(out), "--batch-size", "2", "--device", "cpu", "--threshold", "0.3"]


def _random_args(shapes: Path) -> list[str]:
    return ["predict", "rtdetr_mobilenetv3_small", *_seven(shapes)[:4], "--random-weights", "--size", "128",
            "--threshold", "0", "--top-k", "5", "--batch-size", "2", "--device", "cpu", "--no-draw"]


@pytest.fixture(scope="module")
def two_rank_jobs(shapes, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The command-line jobs of the tests below, run in one ``torchrun --nproc_per_node 2`` launch: (their
    folder, each job's standard output, both ranks')."""
    root = tmp_path_factory.mktemp("two")
    seven = _seven(shapes)
    assert main(["predict", MODEL, *seven[:4], *_predict_args(root / "resumed")]) == 0  # a first, smaller job
    jobs = {"predict": ["predict", MODEL, *seven, *_predict_args(root / "predict")],
            "resumed": ["predict", MODEL, *seven, *_predict_args(root / "resumed")],
            "random": [*_random_args(shapes), "--out", str(root / "random")]}
    (root / "jobs.json").write_text(json.dumps(jobs))
    torchrun(__file__, "--jobs", str(root / "jobs.json"))
    return root, {name: "".join((root / f"{name}.rank{r}.out").read_text() for r in (0, 1)) for name in jobs}


def _run_jobs(jobs_file: str) -> None:
    """Runs under torchrun: joins the group with zoo's ``init_distributed`` (its own exit handler, registered first,
    runs after zoo's and records in ``exit.rank<R>`` whether the group is still alive: see
    test_a_group_zoo_joins_is_destroyed_before_the_interpreter_tears_down), then runs each job of ``jobs_file`` as
    ``python -m zoo ARGS`` does, its standard output to ``<name>.rank<R>.out`` beside the file; exits non-zero when
    any job did."""
    import atexit

    import torch.distributed as dist

    from zoo.engine.distributed import init_distributed

    folder, rank = Path(jobs_file).parent, os.environ["RANK"]
    atexit.register(lambda: (folder / f"exit.rank{rank}").write_text(str(dist.is_initialized())))
    init_distributed("cpu")
    jobs, failed = json.loads(Path(jobs_file).read_text()), []
    for name, argv in jobs.items():
        out = folder / f"{name}.rank{rank}.out"
        sys.argv = ["zoo", *argv]
        with open(out, "w") as stdout, contextlib.redirect_stdout(stdout):
            try:
                runpy.run_module("zoo", run_name="__main__", alter_sys=True)
            except SystemExit as done:
                if done.code not in (0, None):
                    failed.append(f"{name}: exit {done.code}")
    sys.exit("\n".join(failed) or None)


def test_eval_two_processes_equals_one(shapes, tmp_path, capsys):
    common = _eval_args(shapes)
    torchrun("-m", "zoo", *common, "--out", str(tmp_path / "two"))
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (one.pop("world_size"), two.pop("world_size")) == (1, 2)
    assert two == one
    assert 0.2 < one["metrics"]["AP"] < 1  # the demo model finds the shapes: a real comparison
    detections = json.loads((tmp_path / "two" / "detections.json").read_text())
    assert detections == json.loads((tmp_path / "one" / "detections.json").read_text())
    assert sorted({d["image_id"] for d in detections}) == sorted(
        im["id"] for im in json.loads((shapes / "val.json").read_text())["images"])


def _result(out: Path) -> dict:
    """detections.json with annotated paths made relative to ``out`` (so that two folders compare equal)."""
    data = json.loads((out / "detections.json").read_text())
    for record in data["images"]:
        assert Path(record["annotated"]).parent == out
        record["annotated"] = Path(record["annotated"]).name
    return data


@pytest.fixture(scope="module")
def single_run(shapes, tmp_path_factory) -> Path:
    """One process, 7 images in batches of 2 (4 batches: 2 ranks get 4 and 3 images)."""
    out = tmp_path_factory.mktemp("one")
    assert main(["predict", MODEL, *_seven(shapes), "--out", str(out), "--batch-size", "2", "--device", "cpu",
                 "--threshold", "0.3"]) == 0
    return out


def _seven(shapes: Path) -> list[str]:
    return sorted(str(p) for p in (shapes / "val").iterdir())[:7]


def test_predict_two_processes_equals_one(two_rank_jobs, single_run):
    out, printed = two_rank_jobs[0] / "predict", two_rank_jobs[1]["predict"]
    assert _result(out) == _result(single_run)
    assert sum(len(r["boxes"]) for r in _result(out)["images"]) >= 7  # the demo model finds shapes
    for record in _result(out)["images"]:
        assert (out / record["annotated"]).read_bytes() == (single_run / record["annotated"]).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_run.iterdir())  # parts removed
    assert printed.count(" detections") == 7  # one line per image, from the rank that did it


def test_predict_resumes_under_torchrun(two_rank_jobs, single_run):
    """The fixture ran a first, smaller job (4 of the 7 images) in one process before the launch."""
    out, printed = two_rank_jobs[0] / "resumed", two_rank_jobs[1]["resumed"]
    assert "4 of 7 images already done, skipping them" in printed
    assert printed.count(" detections") == 3
    assert _result(out) == _result(single_run)


def test_predict_retries_a_failed_image_and_skips_the_rest(shapes, single_run, tmp_path, capsys):
    """A corrupt file does not stop the job: it is listed (exit 1) while the others are written; once it is
    fixed, the rerun does only that file, and the result equals an uninterrupted run's."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    for path in _seven(shapes):
        (folder / Path(path).name).write_bytes(Path(path).read_bytes())
    bad = folder / Path(_seven(shapes)[5]).name
    bad.write_bytes(b"not a png")
    args = ["predict", MODEL, str(folder), "--out", str(out), "--batch-size", "2", "--device", "cpu",
            "--threshold", "0.3"]
    assert main(args) == 1
    assert f"{bad}: cannot read image" in capsys.readouterr().err
    first = _result(out)
    assert len(first["images"]) == 6 and [f["source"] for f in first["failed"]] == [str(bad)]
    bad.write_bytes(Path(_seven(shapes)[5]).read_bytes())
    assert main(args) == 0
    assert "6 of 7 images already done" in capsys.readouterr().out
    resumed, single = _result(out), _result(single_run)
    for record in resumed["images"] + single["images"]:
        record["source"] = Path(record["source"]).name
    # the retried image ran in a batch of another size than in one go (other kernels, other rounding): its floats may
    # differ in the last bits; everything else is identical
    assert resumed["failed"] == [] and len(resumed["images"]) == len(single["images"])
    for a, b in zip(resumed["images"], single["images"]):
        assert {k: v for k, v in a.items() if k not in ("boxes", "scores", "source_stat")} == \
            {k: v for k, v in b.items() if k not in ("boxes", "scores", "source_stat")}
        assert torch.allclose(torch.tensor(a["boxes"]), torch.tensor(b["boxes"]), atol=1e-3, rtol=0)
        assert torch.allclose(torch.tensor(a["scores"]), torch.tensor(b["scores"]), atol=1e-5, rtol=0)

    assert main([*args[:-1], "0.5"]) == 0  # other settings: not mixed, the earlier results are set aside
    assert "other settings (threshold 0.3 there, 0.5 now): moved them to" in capsys.readouterr().err
    earlier = json.loads((out / "earlier-run-1" / "detections.json").read_text())
    assert earlier["threshold"] == 0.3 and len(earlier["images"]) == 7
    assert all(Path(r["annotated"]).parent == out / "earlier-run-1" and Path(r["annotated"]).is_file()
               for r in earlier["images"])
    assert json.loads((out / "detections.json").read_text())["threshold"] == 0.5


def test_random_weights_are_the_same_in_every_process(shapes, two_rank_jobs, tmp_path):
    """Issue 21 item 19: ``--random-weights`` was unseeded, so each rank built another model."""
    assert main([*_random_args(shapes), "--out", str(tmp_path / "one")]) == 0
    one, two = (json.loads((folder / "detections.json").read_text())
                for folder in (tmp_path / "one", two_rank_jobs[0] / "random"))
    assert len(one["images"]) == 4 and all(len(r["scores"]) == 5 for r in one["images"])
    assert two == one


def test_a_group_zoo_joins_is_destroyed_before_the_interpreter_tears_down(two_rank_jobs):
    """A gloo group left alive into the interpreter's teardown can abort the process (pytorch/pytorch#190489: 7 of
    20 four-process runs here). Each rank of the jobs' launch joined with ``init_distributed``; its own exit
    handler, registered first, runs after zoo's and records whether the group is still alive."""
    root = two_rank_jobs[0]
    assert [(root / f"exit.rank{r}").read_text() for r in (0, 1)] == ["False", "False"]


def _train_worker(data: str, out: str) -> None:
    """Runs under torchrun: fine-tune the demo for 2 steps with validation, recording which images each rank read."""
    from zoo.engine import evaluate as evaluation
    from zoo.engine.distributed import gather_to_rank0, rank
    from zoo.engine.trainer import train

    reads, read = [], evaluation._CocoImages.__getitem__
    evaluation._CocoImages.__getitem__ = lambda self, i: (reads.append(self.ids[i]), read(self, i))[1]
    train(model="rtdetr_mobilenetv3_small", weights="shapes_demo", train_ann=f"{data}/train.json",
          train_images=f"{data}/train", val_ann=f"{data}/val.json", val_images=f"{data}/val", output_dir=out,
          epochs=1, batch_size=4, lr=1e-4, warmup_steps=1, num_workers=0, augment=False, multiscale=False,
          device="cpu", progress=False)
    parts = gather_to_rank0(reads)
    if rank() == 0:
        (Path(out) / "reads.json").write_text(json.dumps(parts))


def test_training_validation_is_sharded_and_equals_zoo_eval(shapes, tmp_path):
    """2 ranks fine-tune the demo for 2 steps (their BatchNorm statistics differ) and validate on 11 images in
    batches of 8: rank 0 reads 8, rank 1 reads 3, and the logged metrics equal one process's ``zoo.evaluate`` of
    the exported model."""
    import zoo
    from zoo.data.synthetic import make_synthetic_coco

    make_synthetic_coco(shapes, "train", 8, seed=0, image_size=96)
    run = tmp_path / "run"
    torchrun(__file__, str(shapes), str(run))
    ids = sorted(im["id"] for im in json.loads((shapes / "val.json").read_text())["images"])
    assert json.loads((run / "reads.json").read_text()) == [ids[:8], ids[8:]]
    logged = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    val = {k[len("val_"):]: v for k, v in logged.items() if k.startswith("val_")}
    model = zoo.create_model(f"local-dir:{run / 'final'}")
    result = zoo.evaluate(model, shapes / "val.json", shapes / "val", batch_size=8, num_workers=0, device="cpu",
                          progress=False, verbose=False)
    assert val == result.metrics
    assert val["AP"] > 0.2


if __name__ == "__main__":
    if sys.argv[1] == "--jobs":
        _run_jobs(sys.argv[2])
    else:
        _train_worker(sys.argv[1], sys.argv[2])
