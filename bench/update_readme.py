"""Copy the table of bench/latest.txt (written by bench/run.sh) into
README.md between the <!-- bench:start --> and <!-- bench:end --> markers,
and the whole output into bench/README.md.  The quoted figures are thus the
CLI's output, never typed by hand."""
import pathlib
import re

here = pathlib.Path(__file__).resolve().parent
out = (here / "latest.txt").read_text()
table = out[out.index("case "):out.index("\nms: median")].rstrip()

readme = here.parent / "README.md"
text = readme.read_text()
text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->",
              "<!-- bench:start -->\n```\n" + table.replace("\\", "\\\\") + "\n```\n<!-- bench:end -->",
              text, flags=re.S)
readme.write_text(text)

bench_readme = here / "README.md"
text = bench_readme.read_text()
text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->",
              "<!-- bench:start -->\n```\n" + out.strip().replace("\\", "\\\\") + "\n```\n<!-- bench:end -->",
              text, flags=re.S)
bench_readme.write_text(text)
