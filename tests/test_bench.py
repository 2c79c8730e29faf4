"""The benchmark CLI runs end to end and reports what it measured."""
import importlib.util
import json

import numpy as np
import pytest

from fastnorm import bench
from fastnorm._catalogue import CATALOGUE
from fastnorm._native import kernels as _kernels


def test_bench_cli_small_run(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = bench.main(["--layers", "batchnorm2d", "--shapes", "2x3x8x8", "--threads", "1",
                     "--repeat", "2",
                     "--min-time", "0.0005", "--compare", "numpy", "--quiet",
                     "--copy-mib", "4", "--json", str(out)])
    assert rc in (None, 0)
    text = capsys.readouterr().out
    assert "BatchNorm2d 2x3x8x8" in text and "vs numpy" in text and "floor" in text
    assert "copy bandwidth" in text and "onnxruntime" in text
    data = json.loads(out.read_text())
    bw = data["environment"]["bandwidth"]["1"]
    assert bw > 1e8
    rows = data["rows"]
    assert {r["mode"] for r in rows} == {"train", "eval", "eval-out", "backward"}
    for r in rows:
        fn = r["results"]["fastnorm"]
        assert len(fn["samples_s"]) == 2 and fn["median_s"] > 0
        assert r["max_abs_diff_vs_fastnorm"]["numpy"] < 1e-4
        assert r["floor_fraction"] == pytest.approx(r["bytes_moved"] / fn["median_s"] / bw)


def test_bench_covers_every_layer(tmp_path, capsys):
    out = tmp_path / "all.json"
    bench.main(["--shapes", "2x32x6x6", "--threads", "1", "--repeat", "1", "--min-time",
                "0.0002", "--compare", "numpy,onnxruntime", "--quiet", "--copy-mib", "0",
                "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    layers = {r["layer"] for r in rows}
    # the bench's layers are the catalogue's: every one that takes a 4D input
    assert layers == {e.name for e in CATALOGUE if 4 in e.ranks}
    assert [n for n in bench.LAYERS] == [e.name.lower() for e in CATALOGUE]
    for r in rows:
        for peer, diff in r["max_abs_diff_vs_fastnorm"].items():
            assert diff < 1e-3, (r["layer"], r["mode"], peer, diff)


def test_stream_copy_copies():
    src = np.arange(3 << 20, dtype=np.uint8)
    dst = np.zeros_like(src)
    _kernels.stream_copy(src, dst)
    assert (dst == src).all()
    with pytest.raises(ValueError, match="dst has"):
        _kernels.stream_copy(src, dst[1:])


def test_missing_peer_is_named_not_fatal(capsys, monkeypatch):
    monkeypatch.setattr(bench, "_ort_status", lambda compare: (None, "not installed"))
    bench.main(["--layers", "layernorm", "--shapes", "4x8", "--threads", "1", "--repeat",
                "1", "--min-time", "0", "--compare", "numpy,onnxruntime", "--quiet",
                "--copy-mib", "0"])
    text = capsys.readouterr().out
    assert "onnxruntime (not installed, skipped)" in text and "vs onnxruntime" not in text


def test_plot(tmp_path, capsys):
    png = tmp_path / "b.png"
    bench.main(["--layers", "groupnorm", "--shapes", "2x32x4x4", "--threads", "1",
                "--repeat", "1", "--min-time", "0", "--compare", "numpy", "--quiet",
                "--copy-mib", "0", "--plot", str(png)])
    captured = capsys.readouterr()
    if importlib.util.find_spec("matplotlib") is None:
        assert "matplotlib is not installed" in captured.err and not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
