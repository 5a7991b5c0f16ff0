"""The README's Python API example runs as written (on the bundled demo family)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("### Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "tensors written" in out
    assert (tmp_path / "code-prose-ties" / "model.safetensors").is_file()
    assert (tmp_path / "code-prose-ties" / "merge_plan.yml").read_text().startswith("merge_method: ties")
