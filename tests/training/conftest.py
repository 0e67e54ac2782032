from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.augment import eval_transform
from training.config import Config, load_config
from training.data import load_splits

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


@pytest.fixture
def tiny_cfg() -> Config:
    """depth 4, dim 32, 28-px mnist5k: a real model that trains in seconds."""
    return load_config(TINY)


@pytest.fixture(scope="session")
def mnist_batch() -> torch.Tensor:
    """32 real, normalised mnist5k test images ``[32, 3, 28, 28]``."""
    cfg = load_config(TINY)
    test = load_splits("mnist5k", cfg.data.test_fraction).test
    tf = eval_transform(cfg.model.img_size, cfg.data)
    return torch.stack([tf(test.image(i)) for i in range(32)])


@pytest.fixture(scope="session")
def digit_folder(tmp_path_factory) -> Path:
    """The demo gallery (mnist5k's 1,000 test digits, a folder per label) as an image folder:
    a dataset small enough that scoring a run takes seconds, for tests whose subject is not the
    dataset."""
    from scripts.demo_gallery import main as write_gallery

    root = tmp_path_factory.mktemp("digits")
    write_gallery(root)
    return root


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Tiny models run fastest on one thread, and the suite shares the machine."""
    torch.set_num_threads(1)
