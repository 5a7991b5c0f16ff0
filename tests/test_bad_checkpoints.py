"""Every broken checkpoint is one line naming the file and the fix (exit 2), never a traceback; the
reader either reads a file correctly or raises its own error (fuzzed)."""

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mergescope.io.checkpoint import CheckpointError, open_checkpoint
from mergescope.tui.cli import main
from tests.ckpt_utils import make_finetune, make_llama


@pytest.fixture
def good(tmp_path):
    return make_llama(tmp_path / "base", n_layers=2, hidden=8, vocab=16, dtype=torch.float32, seed=0)


def _raw_file(path: Path, header: dict, data: bytes = b"", hlen: int | None = None) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<q", len(raw) if hlen is None else hlen) + raw + data)
    return path


def _header(**entry) -> dict:
    e = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    e.update(entry)
    return {"w": e}


def _analyze_error(capsys, base, bad) -> str:
    assert main(["analyze", str(base), str(bad), "--no-cache", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("mergescope analyze: error: ")
    assert "Traceback" not in err[0]
    return err[0]


def _cases(tmp: Path):
    """(label, path, text the message must hold) for each broken input."""
    d = tmp / "cases"
    d.mkdir()
    cases = [("missing path", d / "nope", "no such file")]
    (d / "notes.txt").write_text("hello")
    cases.append(("not a checkpoint", d / "notes.txt", "not a checkpoint"))
    (d / "empty").mkdir()
    cases.append(("empty directory", d / "empty", "directory is empty"))
    (d / "cfg").mkdir()
    (d / "cfg" / "config.json").write_text("{}")
    cases.append(("only config.json", d / "cfg", "holds only config.json"))
    sh = d / "shards"
    sh.mkdir()
    save_file({"w": torch.zeros(2)}, str(sh / "a.safetensors"))
    (sh / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "a.safetensors", "v": "b.safetensors"}})
    )
    cases.append(("index names a missing shard", sh, "missing"))
    tw = d / "twice"
    tw.mkdir()
    save_file({"w": torch.zeros(2)}, str(tw / "a.safetensors"))
    (tw / "model.safetensors.index.json").write_text('{"weight_map": {"w": "a.safetensors", "w": "a.safetensors"}}')
    cases.append(("index names a tensor twice", tw, "names 'w' twice"))
    ok = d / "ok.safetensors"
    save_file({"w": torch.arange(16, dtype=torch.float32)}, str(ok))
    trunc = d / "truncated.safetensors"
    trunc.write_bytes(ok.read_bytes()[:-10])
    cases.append(("truncated data", trunc, "past the end"))
    cases.append(
        ("header length too big", _raw_file(d / "big.safetensors", _header(), bytes(16), hlen=10**12), "corrupt")
    )
    cases.append(("negative header length", _raw_file(d / "neg.safetensors", _header(), bytes(16), hlen=-5), "corrupt"))
    bad_json = d / "json.safetensors"
    bad_json.write_bytes(struct.pack("<q", 10) + b"{not json!" + bytes(16))
    cases.append(("invalid header JSON", bad_json, "corrupt safetensors header"))
    cases.append(
        (
            "offsets outside",
            _raw_file(d / "off.safetensors", _header(data_offsets=[0, 4096]), bytes(16)),
            "past the end",
        )
    )
    two = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
    }
    cases.append(("overlapping offsets", _raw_file(d / "overlap.safetensors", two, bytes(24)), "overlap"))
    cases.append(("unsupported dtype", _raw_file(d / "c64.safetensors", _header(dtype="C64"), bytes(16)), "C64"))
    cases.append(
        ("size does not match shape", _raw_file(d / "size.safetensors", _header(shape=[3, 3]), bytes(16)), "needs 36")
    )
    evil = d / "evil"
    evil.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > /dev/null",))

    with open(evil / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": Evil()}, fh, protocol=2)
    cases.append(("a pickle that runs code", evil, "refused"))
    return cases


def test_every_broken_input_is_one_line_naming_the_file(good, tmp_path, capsys):
    for label, path, needle in _cases(tmp_path):
        line = _analyze_error(capsys, good, path)
        assert needle in line, (label, line)
        assert str(path) in line or path.name in line, (label, line)


def test_unreadable_file_is_a_clear_error(good, monkeypatch):
    real_open = open

    def deny(file, *a, **k):
        if str(file).endswith("model.safetensors"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(CheckpointError, match="Permission denied|permission denied"):
        open_checkpoint(good)


def test_nan_weights_are_an_error_finding(good, tmp_path, capsys):
    ft = make_finetune(good, tmp_path / "ft", scale=0.05, seed=1)
    from safetensors.torch import load_file

    sd = load_file(str(ft / "model.safetensors"))
    name = next(iter(sd))
    sd[name][0] = float("nan")
    save_file(sd, str(ft / "model.safetensors"))
    assert main(["analyze", str(good), str(ft), "--no-cache", "-q", "--fail-on", "error"]) == 1
    assert "non-finite" in capsys.readouterr().out


def _valid_bytes() -> bytes:
    import io

    from safetensors.torch import save

    buf = io.BytesIO(
        save({"a": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)})
    )
    return buf.getvalue()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_read_correctly_or_raise_our_error(tmp_path, data):
    raw = bytearray(_valid_bytes())
    hlen = struct.unpack("<q", raw[:8])[0]
    kind = data.draw(st.sampled_from(["flip", "truncate", "header", "length"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, len(raw) - 1))
            raw[pos] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "length":
        raw[:8] = struct.pack("<q", data.draw(st.integers(-(2**63), 2**63 - 1)))
    else:
        header = json.loads(bytes(raw[8 : 8 + hlen]))
        name = data.draw(st.sampled_from(["a", "b"]))
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets"]))
        values = st.one_of(
            st.integers(-(2**40), 2**40),
            st.text(max_size=6),
            st.lists(st.integers(-(2**20), 2**20), max_size=4),
            st.none(),
            st.sampled_from(["F16", "I8", "BOOL", "F64", "U16"]),
        )
        header[name][field] = data.draw(values)
        body = json.dumps(header).encode()
        raw = bytearray(struct.pack("<q", len(body)) + body + raw[8 + hlen :])
    path = tmp_path / f"fuzz-{os.getpid()}.safetensors"
    path.write_bytes(bytes(raw))
    try:
        ck = open_checkpoint(path)
    except CheckpointError as exc:
        assert str(path) in str(exc)
        return
    for name in ck.names():
        t = ck.get(name)
        assert tuple(t.shape) == ck.info(name).shape
        t.float().sum()
