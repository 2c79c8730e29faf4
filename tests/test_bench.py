"""The benchmark CLI runs end to end and reports what it measured."""
import json

from fastnorm import bench


def test_bench_cli_small_run(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = bench.main(["--layers", "batchnorm2d", "--shapes", "2x3x8x8", "--threads", "1",
                     "--repeat", "2",
                     "--min-time", "0.0005", "--compare", "numpy", "--quiet",
                     "--json", str(out)])
    assert rc in (None, 0)
    text = capsys.readouterr().out
    assert "BatchNorm2d 2x3x8x8" in text and "vs numpy" in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {r["mode"] for r in rows} == {"train", "eval", "eval-out", "backward"}
    for r in rows:
        fn = r["results"]["fastnorm"]
        assert len(fn["samples_s"]) == 2 and fn["median_s"] > 0
        assert r["max_abs_diff_vs_fastnorm"]["numpy"] < 1e-4


def test_bench_covers_every_layer(tmp_path, capsys):
    out = tmp_path / "all.json"
    bench.main(["--shapes", "2x32x6x6", "--threads", "1", "--repeat", "1", "--min-time",
                "0.0002", "--compare", "numpy", "--quiet", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    layers = {r["layer"] for r in rows}
    assert layers == {"BatchNorm2d", "InstanceNorm2d", "LayerNorm", "GroupNorm",
                      "LocalResponseNorm", "RMSNorm"}
    for r in rows:
        for peer, diff in r["max_abs_diff_vs_fastnorm"].items():
            assert diff < 1e-3, (r["layer"], r["mode"], peer, diff)
