"""The docs point at code that exists, and the README's snippets run as written.

A link is any of:

- a backticked repo path, ``mmens/ops/wbf.py``, optionally with a symbol:
  ``mmens/ops/wbf.py:weighted_boxes_fusion`` or, for tests, ``tests/x.py::test_y``; a path
  followed by backticked names in parentheses, ``mmens/ops/theta.py`` (``j_reg``,
  ``grad_j_reg``), names those symbols of it; a later ``::test_z`` on the same line belongs
  to the last test file named;
- a repo path inside a backticked or ``bash``-fenced command (``python tools/x.py``);
- ``REV:path`` (or a command after ``git checkout REV &&``): the file as it was at commit
  REV, for code that has since been deleted;
- a dotted ``mmens.x.y`` name;
- a backticked ``test_name`` alone: a test defined in some file of tests/;
- a markdown link or image to a repo file, with its ``#anchor`` if it has one.

A path must exist; a symbol must be defined in the file (def, class or assignment, found
with ``ast`` for Python; a whole word elsewhere).
"""
import ast
import glob
import os.path as osp
import re
import subprocess
import sys
import textwrap
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DOCS = ['README.md'] + sorted(
    osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'docs', '**', '*.md'), recursive=True))

# first components of the repo paths that docs may name
_ROOTS = r'(?:mmens|tools|tests|configs|docs|data|scripts|requirements|\.ci)'
_PATH = rf'(?:{_ROOTS}/[\w.*/-]*|Makefile|setup\.py|README\.md)'
_SYMBOL = r'[A-Za-z_][\w.]*'
_REV = r'[0-9a-f]{7,40}'
# a whole backticked link: optional REV:, the path, an optional :symbol or ::test[::test]
_LINK = re.compile(rf'^(?:(?P<rev>{_REV}):)?(?P<path>{_PATH})'
                   rf'(?:(?P<sep>::?)(?P<sym>{_SYMBOL}(?:::{_SYMBOL})*))?$')
_CONTINUATION = re.compile(rf'^::(?P<sym>{_SYMBOL}(?:::{_SYMBOL})*)$')
_DOTTED = re.compile(r'^(?P<name>mmens(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$')
_TOKEN = re.compile(rf'(?<![\w/.=-]){_PATH}')
_CHECKOUT = re.compile(rf'git checkout (?P<rev>{_REV})\b')
_SPAN = re.compile(r'`([^`\n]+)`')
_PAREN_NAMES = re.compile(r'\s*\(((?:`[^`\n]+`(?:,\s*)?)+)\)')
_MD_LINK = re.compile(r'\]\((?P<target>[^)\s]+)\)')


class Link:
    """One reference found in a markdown file: where, what file (at which commit) and which
    symbol (``None``: the file itself; ``'#x'``: a heading anchor)."""

    def __init__(self, doc: str, line: int, path: str, symbol: Optional[str] = None,
                 rev: Optional[str] = None) -> None:
        self.doc, self.line, self.path, self.symbol, self.rev = doc, line, path, symbol, rev

    def __repr__(self) -> str:
        at = f'{self.rev}:' if self.rev else ''
        sym = f' :{self.symbol}' if self.symbol else ''
        return f'{self.doc}:{self.line}: {at}{self.path}{sym}'


def _split_fences(text: str) -> Iterator[Tuple[int, str, Optional[str]]]:
    """Yield ``(line number, line, fence language or None outside fences)``."""
    lang = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith('```'):
            lang = None if lang is not None else (stripped[3:].strip() or 'text')
            continue
        yield number, line, lang


def _command_links(doc: str, number: int, command: str) -> Iterator[Link]:
    """Repo paths in a shell command; after ``git checkout REV &&`` they are REV's paths."""
    checkout = _CHECKOUT.search(command)
    rev = checkout.group('rev') if checkout else None
    for token in _TOKEN.findall(command):
        yield Link(doc, number, token.rstrip('.,;:)'), rev=rev)


def _span_links(doc: str, number: int, line: str) -> Iterator[Link]:
    """The links of the backticked spans of one prose line."""
    last_test_file = None
    for match in _SPAN.finditer(line):
        span = match.group(1).strip()
        link = _LINK.match(span)
        if link:
            path, rev, sym = link.group('path'), link.group('rev'), link.group('sym')
            if path.endswith('.py') and path.startswith('tests/'):
                last_test_file = path
            yield Link(doc, number, path.rstrip('.,;:'), sym, rev)
            names = _PAREN_NAMES.match(line, match.end())
            if names and path.endswith('.py'):
                for name in re.findall(r'`([^`]+)`', names.group(1)):
                    if re.fullmatch(_SYMBOL, name):  # not `theta_mode='conditional'`
                        yield Link(doc, number, path, name, rev)
            continue
        continuation = _CONTINUATION.match(span)
        if continuation:
            if last_test_file is None:
                yield Link(doc, number, '<no test file before>', span)
            else:
                yield Link(doc, number, last_test_file, continuation.group('sym'))
            continue
        if re.fullmatch(r'test_\w+', span):  # a test named without its file: any test file
            yield Link(doc, number, 'tests/', span)
            continue
        dotted = _DOTTED.match(span)
        if dotted:
            yield Link(doc, number, dotted.group('name'), symbol='<module>')
            continue
        if ' ' in span:  # an inline command
            yield from _command_links(doc, number, span)


def _markdown_links(doc: str, number: int, line: str) -> Iterator[Link]:
    for match in _MD_LINK.finditer(line):
        target = match.group('target')
        if re.match(r'^[a-z]+:', target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition('#')
        path = osp.normpath(osp.join(osp.dirname(doc), path)) if path else doc
        yield Link(doc, number, path, f'#{anchor}' if anchor else None)


def doc_links(doc: str, text: str) -> List[Link]:
    """Every link of one markdown file (``doc`` is its repo-relative path)."""
    links = []
    for number, line, lang in _split_fences(text):
        if lang is None:
            links += _span_links(doc, number, line)
            links += _markdown_links(doc, number, line)
        elif lang in ('bash', 'sh', 'shell'):
            links += _command_links(doc, number, line.split('#', 1)[0])
    return links


def _defined(body: List[ast.stmt]) -> Dict[str, Optional[ast.ClassDef]]:
    """Names a module or class body defines (def, class, assignment, import), mapped to
    their class node when they are classes."""
    names: Dict[str, Optional[ast.ClassDef]] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = None
        elif isinstance(node, ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names.setdefault(name.id, None)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):  # re-exports of a package
            for alias in node.names:
                names.setdefault((alias.asname or alias.name).split('.')[0], None)
        elif isinstance(node, (ast.If, ast.Try)):  # guarded definitions
            for block in [node.body, node.orelse] + [h.body for h in getattr(node, 'handlers', [])]:
                for key, value in _defined(block).items():
                    names.setdefault(key, value)
    return names


def python_defines(source: str, symbol: str) -> bool:
    """Whether ``symbol`` (``name``, ``Class.attr`` or pytest's ``Class::test``) is defined
    in the Python ``source``."""
    body = ast.parse(source).body
    parts = re.split(r'::|\.', symbol)
    for i, part in enumerate(parts):
        names = _defined(body)
        if part not in names:
            return False
        if i + 1 < len(parts):
            if names[part] is None:
                return False
            body = names[part].body
    return True


def _heading_anchors(text: str) -> Set[str]:
    """GitHub's anchors of the headings of a markdown text."""
    anchors = set()
    for _, line, lang in _split_fences(text):
        heading = re.match(r'^#{1,6}\s+(.*?)\s*$', line)
        if lang is None and heading:
            slug = re.sub(r'[^\w\- ]', '', heading.group(1).lower().replace('`', ''))
            anchors.add(slug.replace(' ', '-'))
    return anchors


def _git_show(rev: str, path: str) -> Optional[str]:
    out = subprocess.run(['git', 'show', f'{rev}:{path}'], cwd=ROOT, capture_output=True)
    return out.stdout.decode('utf-8', 'replace') if out.returncode == 0 else None


def _defined_in_tests(name: str) -> bool:
    for path in glob.glob(osp.join(ROOT, 'tests', '**', 'test_*.py'), recursive=True):
        with open(path, encoding='utf-8') as f:
            source = f.read()
        if name in source and python_defines(source, name):
            return True
    return False


def _module_file(dotted: str) -> Tuple[Optional[str], List[str]]:
    """The file of the longest module prefix of ``dotted``, and the rest of the name."""
    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        base = osp.join(ROOT, *parts[:cut])
        for candidate in (base + '.py', osp.join(base, '__init__.py')):
            if osp.isfile(candidate):
                return candidate, parts[cut:]
        if glob.glob(base + '*.so'):  # the compiled kernel, mmens._ext
            return None, []
    return None, parts


def _read(link: Link) -> Tuple[Optional[str], str]:
    """The text of the linked file (None when it is missing or a directory) and an error
    for a missing path ('' when it exists)."""
    if link.rev:
        text = _git_show(link.rev, link.path.rstrip('/'))
        return text, '' if text is not None else f'not in commit {link.rev}'
    full = osp.join(ROOT, link.path)
    if '*' in link.path:
        return None, '' if glob.glob(full) or link.path.endswith('.so') else 'matches no file'
    if osp.isdir(full):
        return None, ''
    if not osp.isfile(full):
        return None, 'does not exist'
    with open(full, encoding='utf-8', errors='replace') as f:
        return f.read(), ''


def check(link: Link, own_text: Optional[str] = None) -> str:
    """'' if the link resolves, else why not (``own_text``: the text of the linking doc, for
    its own anchors, when it is not read from the repo)."""
    if link.symbol == '<module>':
        module, rest = _module_file(link.path)
        if module is None:
            return '' if not rest else 'no such module'
        with open(module, encoding='utf-8') as f:
            ok = not rest or python_defines(f.read(), '.'.join(rest))
        return '' if ok else f'{osp.relpath(module, ROOT)} defines no {".".join(rest)}'
    if own_text is not None and link.path == link.doc:
        text, missing = own_text, ''
    else:
        text, missing = _read(link)
    if missing or link.symbol is None:
        return missing
    if text is None and not link.rev and link.symbol.startswith('test_'):
        return '' if _defined_in_tests(link.symbol) else 'no test of that name in tests/'
    if text is None:
        return 'a directory has no symbols'
    if link.symbol.startswith('#'):
        return '' if link.symbol[1:] in _heading_anchors(text) else 'no such heading'
    if link.path.endswith('.py'):
        found = python_defines(text, link.symbol)
    else:
        found = re.search(rf'\b{re.escape(link.symbol)}\b', text) is not None
    return '' if found else f'defines no {link.symbol}'


def _all_links() -> List[Link]:
    links = []
    for doc in DOCS:
        with open(osp.join(ROOT, doc), encoding='utf-8') as f:
            links += doc_links(doc, f.read())
    return links


def test_the_checker_catches_stale_links():
    text = textwrap.dedent("""\
        # Title
        See `mmens/ops/wbf.py:weighted_boxes_fusion`, `mmens/ops/wbf.py:no_such_fn`,
        `mmens/ops/no_such_file.py`, `mmens/ops/theta.py` (`j_reg`, `j_nothing`),
        `tests/test_docs.py::test_the_checker_catches_stale_links`, `::test_gone`,
        `mmens.ops.no_such_name`, [here](#title), [there](#nowhere), [doc](no_such.md),
        `test_the_checker_catches_stale_links`, `test_no_such_test`.

        ```bash
        python tools/analysis_tools/no_such_tool.py --out /tmp/x.json
        ```
        """)
    bad = [(link.line, link.path, link.symbol) for link in doc_links('README.md', text)
           if check(link, own_text=text)]
    assert bad == [(2, 'mmens/ops/wbf.py', 'no_such_fn'), (3, 'mmens/ops/no_such_file.py', None),
                   (3, 'mmens/ops/theta.py', 'j_nothing'),
                   (4, 'tests/test_docs.py', 'test_gone'),
                   (5, 'mmens.ops.no_such_name', '<module>'),
                   (5, 'README.md', '#nowhere'), (5, 'no_such.md', None),
                   (6, 'tests/', 'test_no_such_test'),
                   (9, 'tools/analysis_tools/no_such_tool.py', None)]


def test_every_doc_link_exists():
    links = [link for link in _all_links() if not link.rev]
    assert len(links) > 100  # the parser still finds the links of theory.md and the others
    broken = [f'{link!r}: {why}' for link in links for why in [check(link)] if why]
    assert not broken, 'stale links in the docs:\n' + '\n'.join(broken)


def test_commits_and_files_at_commits_the_docs_name_exist():
    links = [link for link in _all_links() if link.rev]
    shallow = subprocess.run(['git', 'rev-parse', '--is-shallow-repository'], cwd=ROOT,
                             capture_output=True, text=True)
    if shallow.returncode != 0 or shallow.stdout.strip() != 'false':
        pytest.skip('needs a git checkout with its history (not a shallow clone)')
    broken = [f'{link!r}: {why}' for link in links for why in [check(link)] if why]
    for doc in DOCS:  # every commit a doc names ("at commit d76167a") is in the history
        with open(osp.join(ROOT, doc), encoding='utf-8') as f:
            revs = set(re.findall(r'\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b',
                                  f.read()))
        for rev in sorted(revs):
            found = subprocess.run(['git', 'cat-file', '-e', f'{rev}^{{commit}}'], cwd=ROOT)
            if found.returncode != 0:
                broken.append(f'{doc}: commit {rev} is not in the history')
    assert not broken, 'stale links to earlier commits:\n' + '\n'.join(broken)


def readme_block(marker: str) -> str:
    """The fenced block right after ``<!-- test_docs: marker -->`` in README.md."""
    with open(osp.join(ROOT, 'README.md'), encoding='utf-8') as f:
        found = re.search(rf'<!-- test_docs: {marker} -->\n```\w*\n(.*?)\n```', f.read(), re.S)
    assert found, f'README.md has no fenced block after <!-- test_docs: {marker} -->'
    return found.group(1)


def _call_source(snippet: str, function: str) -> str:
    """The source of the snippet's first call of ``function``."""
    for node in ast.walk(ast.parse(snippet)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == function):
            return ast.get_source_segment(snippet, node)
    raise AssertionError(f"the README's Python snippet no longer calls {function}")


def test_readme_python_snippet_runs_and_equals_ensemble_boxes(tmp_path):
    snippet = readme_block('python')
    # after the snippet, as written: its WBF call again with ensemble-boxes' function, and
    # the modules it imported (the README says mmens.ops needs torch and numpy only)
    check = textwrap.dedent(f"""
        import sys
        import ensemble_boxes
        ref = eval({_call_source(snippet, 'weighted_boxes_fusion')!r},
                   dict(globals(), weighted_boxes_fusion=ensemble_boxes.weighted_boxes_fusion))
        for got in [(boxes, scores, labels)] + list(per_image):
            assert all(np.array_equal(a, b) for a, b in zip(got, ref)), (got, ref)
        print('OPENMMLAB', sorted(m for m in sys.modules
                                  if m.split('.')[0] in ('mmdet', 'mmcv', 'mmengine')))
        """)
    out = subprocess.run([sys.executable, '-c', snippet + '\n' + check], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == 'OPENMMLAB []'


def test_readme_config_snippet_builds_and_gives_a_finite_loss(tmp_path, monkeypatch):
    import torch
    from mmengine.config import Config

    from mmens.registry import RUNNERS
    from mmens.utils import register_all_modules

    path = tmp_path / 'readme_config.py'
    path.write_text(readme_block('config'))
    monkeypatch.chdir(ROOT)  # its data_root is relative, as in a clone of the repo
    cfg = Config.fromfile(str(path))
    cfg.work_dir = str(tmp_path / 'work_dir')
    # as tools/train.py builds it: its runner_type from mmens' registry, then the
    # runner's own dataloader and model
    register_all_modules(init_default_scope=False)
    runner = RUNNERS.build(cfg)
    loader = runner.build_dataloader(cfg.train_dataloader)
    model = runner.model
    losses = model(**model.data_preprocessor(next(iter(loader)), True), mode='loss')
    assert type(runner).__name__ == 'EnsembleRunner' and len(loader.dataset) == 80
    assert losses and all(torch.isfinite(v).all() for v in losses.values())
