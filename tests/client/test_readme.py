"""The README's Python example, run as written against a real server."""

from __future__ import annotations

from pathlib import Path

from tests.harness import mnist_test
from tests.service.server import Server

ROOT = Path(__file__).resolve().parents[2]


def test_readme_python_example_runs(tiny_bundle, tmp_path, capsys) -> None:
    text = (ROOT / "README.md").read_text()
    code = text.split("<!-- client-example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    gallery = tmp_path / "mnist-test" / "7"
    gallery.mkdir(parents=True)
    test = mnist_test()
    sevens = [i for i in range(len(test)) if int(test.labels[i]) == 7][:12]
    for i in sevens:
        test.image(i).save(gallery / f"mnist-test-{i:05d}.png")
    with Server(tiny_bundle, tmp_path / "data", tmp_path / "log") as s:
        line = 'URL, GALLERY = "http://127.0.0.1:8000", "artifacts/demo/mnist-test/7"'
        assert line in code
        exec(code.replace(line, f"URL, GALLERY = {s.url!r}, {str(gallery)!r}"), {})
    out = capsys.readouterr().out
    assert "{'added': 12}" in out and "12 sevens" in out and "not_found" in out
