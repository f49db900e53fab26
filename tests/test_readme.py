"""The README is a front page: every ```python block runs as written, it stays short,
and its feature map links every page of the user guide."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index):
    # The README's examples are written for users, who run with default promotion.
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(BLOCKS[index], f"README.md block {index}", "exec"), {})


def test_readme_is_a_front_page():
    assert len(TEXT) <= 15_000, f"README.md has {len(TEXT)} characters: move the detail into a docs/ page"
    assert "make demo" in TEXT and "make test" in TEXT


def test_readme_links_every_guide_page_and_no_missing_one():
    links = set(re.findall(r"\]\((docs/[^)#]+)", TEXT))
    guides = {f"docs/guide/{path.name}" for path in (ROOT / "docs" / "guide").glob("*.md")}
    assert guides <= links, f"pages of the user guide missing from the README's feature map: {guides - links}"
    missing = [link for link in links if link.startswith("docs/guide/") and not (ROOT / link).is_file()]
    assert not missing, f"README.md links to guide pages that do not exist: {missing}"
