"""Copy the tables of bench/latest.txt, latest_bfloat16.txt,
latest_float16.txt and latest_models.txt (written by bench/run.sh) into
README.md between the <!-- bench:start --> / <!-- bench:end --> markers
(float32), <!-- bench-bfloat16:start --> ... (16-bit) and
<!-- bench-models:start --> ... (fastnorm-bench --models), and the whole outputs into
bench/README.md.  The quoted figures are thus the CLI's output, never typed
by hand.  A file that is missing leaves its block as it is."""
import pathlib
import re

here = pathlib.Path(__file__).resolve().parent
RUNS = (("bench", "latest.txt"), ("bench-bfloat16", "latest_bfloat16.txt"),
        ("bench-float16", "latest_float16.txt"), ("bench-models", "latest_models.txt"),
        ("bench-per-call", "latest_per_call.txt"))


def table(out):
    start = re.search(r"^(case|model) ", out, flags=re.M).start()
    end = re.search(r"\n(ms: median|x add:)", out).start()
    return out[start:end].rstrip()


def put(text, marker, body):
    pat = rf"<!-- {marker}:start -->.*<!-- {marker}:end -->"
    if not re.search(pat, text, flags=re.S):
        raise SystemExit(f"update_readme: no <!-- {marker}:start/end --> markers")
    return re.sub(pat, f"<!-- {marker}:start -->\n```\n" + body.replace("\\", "\\\\")
                  + f"\n```\n<!-- {marker}:end -->", text, flags=re.S)


readme = here.parent / "README.md"
bench_readme = here / "README.md"
top, full = readme.read_text(), bench_readme.read_text()
for marker, name in RUNS:
    path = here / name
    if not path.exists():
        continue
    out = path.read_text()
    top = put(top, marker, table(out))
    full = put(full, marker, out.strip())
readme.write_text(top)
bench_readme.write_text(full)
