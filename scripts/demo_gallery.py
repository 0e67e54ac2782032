"""Write the mnist5k test split as PNGs, one folder per label: the demo gallery `make run` indexes.

    python scripts/demo_gallery.py artifacts/demo/mnist-test

Ids are ``mnist-test-00042`` (the index within the test split); re-running is a no-op.
"""

from __future__ import annotations

import sys
from pathlib import Path

from training.data import load_splits


def main(out: Path) -> None:
    done = out / ".complete"
    if done.is_file():
        print(f"gallery ready: {out}")
        return
    test = load_splits("mnist5k", 0.2).test
    for i in range(len(test)):
        folder = out / str(int(test.labels[i]))
        folder.mkdir(parents=True, exist_ok=True)
        test.image(i).save(folder / f"mnist-test-{i:05d}.png")
    done.write_text(f"{len(test)}\n")
    print(f"wrote {len(test)} mnist5k test images to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
