"""Settings fail fast; the CLI and README document every option; reindex is resumable."""

from __future__ import annotations

import os
import subprocess
import sys

from export.manifest import bundle_id
from service.collection import ItemIndex
from service.lifecycle.reindex import reindex
from service.settings import Settings


def run(args, repo_root, **env):
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=repo_root, capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )  # fmt: skip


def test_help_names_every_setting(repo_root) -> None:
    res = run(["--help"], repo_root)
    assert res.returncode == 0
    readme = (repo_root / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in res.stdout
        assert f"SDSSL_{name.upper()}" in readme, name


def test_bad_settings_fail_fast(repo_root, tiny_bundle) -> None:
    res = run(["--bundle", str(tiny_bundle)], repo_root, SDSSL_MAX_BATCH="0")
    assert res.returncode == 2 and res.stderr.startswith("error: max_batch")
    res = run(["--bundle", str(tiny_bundle), "--device", "tpu"], repo_root)
    assert res.returncode == 2 and "device" in res.stderr
    res = run(["--bundle", str(tiny_bundle), "--index-factory", "Bogus"], repo_root)
    assert res.returncode == 2 and "FAISS cannot build 'Bogus'" in res.stderr
    res = run(["--bundle", str(tiny_bundle), "--max-request-pixels", "200",
               "--decode-queue-pixels", "100"], repo_root)  # fmt: skip
    assert res.returncode == 2 and "decode_queue_pixels must be >= max_request_pixels" in res.stderr
    res = run(["--bundle", "/no/such/bundle"], repo_root)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "error: /no/such/bundle: not a directory (export one with `make export`)"
    )


def test_reindex_a_folder_is_resumable(tiny_bundle, tmp_path) -> None:
    from PIL import Image

    from tests.harness import mnist_test

    test = mnist_test()
    for i in range(0, 40):
        folder = tmp_path / "gallery" / str(int(test.labels[i * 25]))
        folder.mkdir(parents=True, exist_ok=True)
        test.image(i * 25).save(folder / f"img-{i:03d}.png")
    (tmp_path / "gallery" / "broken.png").write_bytes(b"not an image")
    Image.new("RGB", (5, 5)).save(tmp_path / "extra.png")
    listing = tmp_path / "list.txt"
    listing.write_text("extra.png\tthe-extra\n# a comment\n")

    data = tmp_path / "data"
    first = reindex(tiny_bundle, data, [tmp_path / "gallery"], batch_size=16, progress=False)
    assert first == {"indexed": 40, "skipped_existing": 0, "failed": 1}
    again = reindex(tiny_bundle, data, [tmp_path / "gallery", listing], progress=False)
    assert again == {"indexed": 1, "skipped_existing": 40, "failed": 1}
    bid = bundle_id(tiny_bundle)
    idx = ItemIndex(data / bid, bid, 4, 32)
    try:
        assert idx.count() == 41 and idx.consistency()["consistent"]
        assert idx.get("img-000")["metadata"]["label"] == str(int(test.labels[0]))
        assert idx.get("the-extra") is not None
    finally:
        idx.close()


def test_console_scripts_answer_help() -> None:
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    for name, says in (("sdssl-serve", "--bundle"), ("sdssl-train", "train"),
                       ("sdssl-export", "--exit-depths"), ("sdssl-bench", "scale")):  # fmt: skip
        res = subprocess.run([str(bin_dir / name), "--help"], capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert res.returncode == 0 and says in res.stdout, (name, res.stderr)
