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


def _bench_script(name):
    """bench/<name>.py as a module (skips where bench/ is not beside the tests)."""
    import pathlib
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    if not path.exists():
        pytest.skip(f"bench/{name}.py is not beside the tests")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _isa_pair():
    return _bench_script("isa_pair")


def test_isa_pair_times_both_copies_and_restores_the_choice(capsys):
    from fastnorm import _native
    pair = _isa_pair()
    here = list(pair.copies_here())
    a, b = here[0], here[-1]
    mods = pair.holders()
    assert {m.__name__ for m in mods} >= {"fastnorm._batch_norm", "fastnorm._layer_norm",
                                           "fastnorm._modules", "fastnorm._group_norm"}
    calls = {a: 0, b: 0}
    ka, kb = pair.copies_here()[a], pair.copies_here()[b]
    from fastnorm import _layer_norm as layer_norm
    real = pair.bind

    def counting_bind(ms, k):
        real(ms, k)
        if ms:
            calls[a if k is ka else b] += 1
            assert layer_norm._kernels is k
    pair.bind = counting_bind
    pair.main(["--pair", f"{a},{b}", "--layers", "LayerNorm", "--repeat", "2",
               "--threads", "1", "--dtypes", "float32"])
    text = capsys.readouterr().out
    rows = [ln for ln in text.splitlines() if ln.startswith("LayerNorm 8192x768")]
    assert [r.split()[3] for r in rows] == ["forward", "backward"]
    assert all(float(r.split()[-1]) > 0 for r in rows)
    assert calls[a] >= 4 and calls[b] >= 4
    assert all(m._kernels is _native.kernels for m in mods)      # the choice is back


def test_model_sequences_follow_the_published_configurations():
    from fastnorm._bench_models import MODELS
    kinds = {name: [n.kind for n in make()] for name, (_, make) in MODELS.items()}
    assert kinds["resnet50"] == ["bn"] * 53
    assert kinds["bert-base"] == ["ln"] * 25 and kinds["vit-b16"] == ["ln"] * 25
    assert kinds["llama7b-decode"] == ["rms"] * 65
    assert kinds["convnext-t"] == ["ln"] * 23
    assert kinds["style-transfer"] == ["in"] * 15
    sd = kinds["sd15-unet"]      # 22 resnet blocks, 16 transformer blocks, the output norm
    assert sd.count("gn") == 2 * 22 + 16 + 1 and sd.count("ln") == 3 * 16
    shapes = [n.shape for n in MODELS["sd15-unet"][1]()]
    assert (1, 2560, 8, 8) in shapes and (1, 960, 64, 64) in shapes
    assert MODELS["resnet50-b32"][1]()[0].shape == (32, 64, 112, 112)


def test_bench_models_runs_against_its_peers(tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = bench.main(["--models", "llama7b-decode,bert-base", "--threads", "1", "--repeat",
                     "1", "--min-time", "0", "--quiet", "--copy-mib", "0", "--json",
                     str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Llama-7B decode step" in text and "BERT-base, seq 128" in text
    recs = json.loads(out.read_text())["models"]
    assert [r["model"] for r in recs] == ["llama7b-decode", "bert-base"]
    for r in recs:
        assert r["results"]["fastnorm"]["median_s"] > 0
        for peer, d in r["max_abs_diff_vs_fastnorm"].items():
            assert d < 1e-3, (r["model"], peer, d)
    with pytest.raises(SystemExit):
        bench.main(["--models", "nosuchmodel"])


def test_per_call_script_times_every_layer(capsys):
    pytest.importorskip("torch")
    mod = _bench_script("per_call")
    import torch
    threads = torch.get_num_threads()
    assert mod.main(["--repeat", "1", "--min-time", "0"]) == 0
    assert torch.get_num_threads() == threads           # restored
    out = capsys.readouterr().out.splitlines()
    rows = [ln for ln in out if " 1x" in ln]
    names = {ln.split()[0] for ln in rows}
    assert names == {"BatchNorm2d", "BatchNorm1d", "InstanceNorm2d", "GroupNorm(4)",
                     "LayerNorm", "RMSNorm", "LocalResponseNorm", "SwitchableNorm2d"}
    for ln in rows:
        assert float(ln.split()[2]) > 0 and float(ln.split()[3]) > 0    # np.add, layer
    # the training table: each layer once more (BatchNorm1d on 64x16), with
    # eval, training forward and backward times
    assert sum(ln.startswith("SwitchableNorm2d") for ln in rows) == 2
    train = [ln for ln in out if ln.startswith("BatchNorm1d 64x16")]
    assert len(train) == 1 and all(float(v) > 0 for v in train[0].split()[2:4])


def test_torch_backward_row_asks_for_the_parameters_gradients_too():
    """fastnorm's layer.backward computes the weight and bias gradients, so
    the torch peer's backward must too (asked for the input alone, torch
    skips them)."""
    torch = pytest.importorskip("torch")
    from fastnorm.bench import _torch_callable
    layer = torch.nn.LayerNorm(8)
    x = np.random.default_rng(0).standard_normal((4, 8), dtype=np.float32)
    grads = _torch_callable(layer, x, np.ones_like(x), "backward")()
    assert len(grads) == 3
    assert [tuple(g.shape) for g in grads] == [(4, 8), (8,), (8,)]
