"""Checkpoint round trip, slim checkpoints, resume, and the evaluation record."""

from __future__ import annotations

import json

import pytest
import torch

from training.checkpoint import load_backbone, load_model, load_state, save_slim
from training.errors import CheckpointError, ConfigError
from training.evaluate import evaluate_checkpoint
from training.exits import exit_embeddings
from training.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.training.conftest import TINY
    from training.config import load_config

    cfg = load_config(TINY, ["train.method=mocov3", "train.max_steps=3"])
    out = tmp_path_factory.mktemp("ckpt") / "run"
    train(cfg, out)
    return out


def test_round_trip_gives_identical_embeddings(trained, mnist_batch, tmp_path) -> None:
    model = load_model(trained)
    backbone, cfg = load_backbone(trained)
    depths = list(range(1, cfg.model.depth + 1))
    with torch.no_grad():
        a = exit_embeddings(model.eval_backbone.eval(), mnist_batch, depths)
        b = exit_embeddings(backbone, mnist_batch, depths)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The teacher is what is evaluated for methods that have one.
    assert model.teacher is not None
    save_slim(trained, tmp_path / "slim", fp16=False)
    slim, _ = load_backbone(tmp_path / "slim")
    with torch.no_grad():
        torch.testing.assert_close(exit_embeddings(slim, mnist_batch, depths), b, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="slim"):
        load_model(tmp_path / "slim")


def test_fp16_slim_checkpoint_is_close(trained, mnist_batch, tmp_path) -> None:
    save_slim(trained, tmp_path / "slim16")
    full, cfg = load_backbone(trained)
    half, _ = load_backbone(tmp_path / "slim16")
    with torch.no_grad():
        a = exit_embeddings(full, mnist_batch, [cfg.model.depth])
        b = exit_embeddings(half, mnist_batch, [cfg.model.depth])
    assert torch.nn.functional.cosine_similarity(a, b, dim=-1).min() > 0.999


def test_resume_continues_at_the_same_step_and_lr(tiny_cfg, digit_folder, tmp_path) -> None:
    tiny_cfg.data.dataset = f"folder:{digit_folder}"
    tiny_cfg.train.max_steps = None
    tiny_cfg.train.epochs = 2
    tiny_cfg.train.batch_size = 200  # 800 train images -> 4 steps per epoch, 8 in all
    straight = tmp_path / "straight"
    train(tiny_cfg, straight)

    interrupted = tmp_path / "interrupted"
    short = tiny_cfg.model_copy(deep=True)
    short.train.max_steps = 3
    train(short, interrupted)
    assert load_state(interrupted)["step"] == 3
    train(tiny_cfg, interrupted, resume=interrupted)

    s_straight, s_resumed = load_state(straight), load_state(interrupted)
    assert s_resumed["step"] == s_straight["step"] == 8
    assert s_resumed["lr"] == pytest.approx(s_straight["lr"])
    a, b = load_model(straight).state_dict(), load_model(interrupted).state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_refuses_a_different_model(trained, tmp_path) -> None:
    cfg = load_model(trained).cfg
    cfg.model.depth = 2
    with pytest.raises(ConfigError, match=r"model\.depth"):
        train(cfg, trained, resume=trained)


def test_missing_and_corrupt_checkpoints(trained, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((trained / "config.json").read_text())
    with pytest.raises(CheckpointError, match="missing"):
        load_backbone(broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_backbone(broken)


def test_evaluate_writes_the_metrics_record(trained, tmp_path) -> None:
    metrics = evaluate_checkpoint(trained, output=tmp_path, plot=True)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert set(on_disk) == {"dataset", "exit_depths", "knn_top1", "linear_top1"}
    assert on_disk["exit_depths"] == [1, 2, 3, 4]
    assert all(0.0 <= v <= 1.0 for v in on_disk["knn_top1"] + on_disk["linear_top1"])
    assert (tmp_path / "metrics.png").stat().st_size > 1000
    assert "| exit depth |" in (tmp_path / "metrics.md").read_text()


def test_student_or_teacher_backbone(trained, mnist_batch, tmp_path) -> None:
    """``load_backbone`` gives either network of a full checkpoint (the teacher by default);
    scoring the student never overwrites the metrics export copies into a bundle."""
    model = load_model(trained).eval()
    for which, want in (("auto", model.teacher["backbone"]), ("teacher", model.teacher["backbone"]),
                        ("student", model.backbone)):  # fmt: skip
        net, _ = load_backbone(trained, which)
        got, ref = exit_embeddings(net, mnist_batch, [4]), exit_embeddings(want, mnist_batch, [4])
        assert torch.equal(got, ref), which
    before = (
        (trained / "metrics.json").read_bytes() if (trained / "metrics.json").exists() else None
    )
    metrics = evaluate_checkpoint(trained, exit_depths=[4], plot=False, backbone="student")
    assert metrics["backbone"] == "student"
    assert json.loads((trained / "student" / "metrics.json").read_text()) == metrics
    after = (trained / "metrics.json").read_bytes() if (trained / "metrics.json").exists() else None
    assert after == before
    slim = tmp_path / "slim"
    save_slim(trained, slim)
    with pytest.raises(CheckpointError, match="slim"):
        load_backbone(slim, "student")
    with pytest.raises(CheckpointError, match="backbone must be one of"):
        load_backbone(trained, "ema")
