"""README and docs quote the benchmark numbers of one run: docs/benchmarks.md.

The quoted numbers sit in blocks that benchmarks/run_all.py generates from
docs/benchmarks.md; this test regenerates them and requires no difference.
"""

import importlib.util
import re


def _run_all(root):
    spec = importlib.util.spec_from_file_location("run_all", root / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quoted_numbers_are_generated_from_the_one_run(root):
    run_all = _run_all(root)
    assert run_all.render(check=True) == [], "run `python benchmarks/run_all.py --render`"


def test_the_blocks_exist_where_numbers_are_quoted(root):
    for path, name in [
        ("README.md", "summary"),
        ("docs/accumulation.md", "accumulation"),
        ("docs/recompute.md", "recompute"),
    ]:
        text = (root / path).read_text()
        assert f"<!-- benchmarks:{name} -->" in text and f"<!-- /benchmarks:{name} -->" in text


def test_readme_and_accumulation_doc_agree(root):
    """The issue's example: the same benchmark, the same numbers in both places."""

    def rows(path, name):
        text = (root / path).read_text()
        block = re.search(rf"<!-- benchmarks:{name} -->\n(.*?)<!-- /", text, re.S).group(1)
        return {
            cells[0]: cells[2]
            for line in block.splitlines()
            if line.startswith("| `GradientAccumulator")
            for cells in [[c.strip() for c in line.strip("|").split("|")]]
        }

    readme, accumulation = (
        rows("README.md", "summary"),
        rows("docs/accumulation.md", "accumulation"),
    )
    assert readme and readme == {k: v for k, v in accumulation.items() if k in readme}
