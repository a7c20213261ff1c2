"""The README and docs/ as a newcomer reads them: a one-screen README that
links to one index, an index that links every page, links that resolve, and
no page that repeats another (docs/index.md)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

README = ROOT / 'README.md'
DOCS = sorted((ROOT / 'docs').glob('*.md'))
PAGES = [README, *DOCS]
#: Words of a run of prose that two pages may not share.
SHARED_WORDS = 12


def _prose(text: str) -> str:
    """``text`` without its code: fenced blocks and inline code spans."""
    return re.sub(r'`[^`\n]*`', ' ', re.sub(r'```.*?```', ' ', text, flags=re.S))


def _runs(text: str, n: int = SHARED_WORDS) -> set[str]:
    words = re.findall(r"[\w'.-]+", _prose(text).lower())
    return {' '.join(words[i : i + n]) for i in range(len(words) - n + 1)}


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r'[^\w\- ]', '', heading.strip().lower().replace('`', ''))
    return text.replace(' ', '-')


def _links(page: Path) -> list[tuple[str, str]]:
    """``(target file, anchor)`` of each relative link of ``page``."""
    found = re.findall(r'\]\(([^)\s]+)\)', _prose_keep_links(page.read_text()))
    return [
        tuple(link.split('#', 1)) if '#' in link else (link, '')
        for link in found
        if not re.match(r'[a-z]+:', link)
    ]


def _prose_keep_links(text: str) -> str:
    return re.sub(r'```.*?```', ' ', text, flags=re.S)


def test_the_readme_is_one_screen_of_what_a_newcomer_needs():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    for needed in (
        'g_hat = P (g + wd * w),   P = I - e e^T',
        'bash tools/run_demo.sh ',
        'bash tools/run_tests.sh ',
        'python tools/train.py configs/mask_rcnn_r50_fpn_gc.py\n',
        "gc=dict(layers=('conv', 'fc'))",
        'python tools/train.py CONFIG --gc\n',
        '](docs/index.md)',
    ):
        assert needed in text, needed
    assert 'gc_layers' not in text  # one config form: gc=dict(...)


def test_the_index_links_every_page():
    linked = {target for target, _ in _links(ROOT / 'docs' / 'index.md')}
    assert linked == {p.name for p in DOCS if p.name != 'index.md'}


@pytest.mark.parametrize('page', PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    for target, anchor in _links(page):
        path = (page.parent / target) if target else page
        assert path.exists(), f'{page.name}: {target} does not exist'
        if anchor and path.suffix == '.md':
            headings = re.findall(r'^#+ (.+)$', _prose_keep_links(path.read_text()), flags=re.M)
            assert anchor in {_slug(h) for h in headings}, f'{page.name}: no #{anchor} in {target}'


def test_no_page_repeats_another():
    runs = {page: _runs(page.read_text()) for page in PAGES}
    shared = {
        (a.name, b.name): sorted(runs[a] & runs[b])[:3]
        for a, b in itertools.combinations(PAGES, 2)
        if runs[a] & runs[b]
    }
    assert not shared, f'pages sharing {SHARED_WORDS} words of prose: {shared}'


def test_the_repetition_check_can_fail(tmp_path):
    sentence = 'one output unit keeps its weight sum for the whole run of training here'
    assert _runs(f'A. {sentence}.') & _runs(f'B, `x`: {sentence}!')
    assert not _runs(f'```\n{sentence}\n```') and not _runs(f'`{sentence}`')
