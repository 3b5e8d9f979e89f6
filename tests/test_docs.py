"""The documentation site (mkdocs.yml, docs/): it builds with --strict, its pages render in a
browser, a broken anchor fails the build, and the docstrings' examples of `sparsebench.optim`,
`sparsebench.methods`, `sparsebench.checkpoint` and `sparsebench.run` run as doctests.

`make test` builds the site before the tests (`make docs`); here it is built again into a
temporary folder, so that the test sees what the working tree makes. The screenshots of the
built site (docs/screenshots/site_*.png) are taken again with
``SPARSEBENCH_DOCS_SCREENSHOTS=1 pytest tests/test_docs.py``.
"""

from __future__ import annotations

import doctest
import functools
import http.server
import importlib
import importlib.util
import os
import pkgutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "mkdocs.yml"
#: the pages each checked in the browser: (path in the site, expected heading, shot's name)
PAGES = (("", "sparsebench", "site_index"),
         ("methods/admm/", "ADMM and ADMM-l1", "site_method"),
         ("api/optim/", "sparsebench.optim", "site_api"))


def mkdocs(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``mkdocs ARGS`` in this Python, its output as text (Material's banner about MkDocs 2 off)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _load_config(path: Path) -> dict:
    """mkdocs.yml as plain data: its ``!relative`` and ``!!python`` tags read as strings."""

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, tag, node: loader.construct_scalar(node)
                                 if isinstance(node, yaml.ScalarNode) else None)
    return yaml.load(path.read_text(), Loader=Loader)  # a SafeLoader, plus the tags


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built from the working tree with ``mkdocs build --strict``."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("no MkDocs (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    built = mkdocs("build", "--strict", "--config-file", str(CONFIG), "--site-dir", str(out))
    assert built.returncode == 0, built.stdout + built.stderr
    return out


def nav_pages(nav: list) -> list[str]:
    """Every page of the ``nav:`` of mkdocs.yml, as its path under docs/."""
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_site_builds_strict_with_every_page_snippet_and_figure(site):
    config = _load_config(CONFIG)
    pages = nav_pages(config["nav"])
    # every page in the nav is built, and every page under docs/ is in the nav (--strict
    # refuses a page left out: validation.nav.omitted_files)
    on_disk = sorted(p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk
    for page in pages:
        html = page.removesuffix(".md").removesuffix("index").strip("/")
        assert (site / html / "index.html").is_file(), page
    # the committed reports come in through snippets, the figures through docs/hooks.py, the
    # methods' settings from their parameter models
    default = (site / "suites" / "default" / "index.html").read_text()
    assert "Dense (no pruning): test accuracy" in default
    assert (ROOT / "reports" / "curves.md").read_text().splitlines()[2][:40] in default
    assert (site / "figures" / "reports" / "plots" / "accuracy_vs_compression.png").is_file()
    assert "rho_growth" in (site / "methods" / "admm" / "index.html").read_text()
    # the API reference is the docstrings': the optimizers and their examples
    api = (site / "api" / "optim" / "index.html").read_text()
    for name in ("sparsebench.optim.grda.GRDA", "sparsebench.optim.linbreg.LinBreg",
                 "sparsebench.optim.adabreg.AdaBreg", "sparsebench.optim.proxsgd.ProxSGD"):
        assert f'id="{name}"' in api, name
    assert "Examples:" in api or "Examples</" in api
    for page, name in (("methods", "sparsebench.methods.admm.ADMM"),
                       ("checkpoint", "sparsebench.checkpoint.load"),
                       ("run", "sparsebench.run.run")):
        assert f'id="{name}"' in (site / "api" / page / "index.html").read_text(), name


def test_every_suite_and_benchmark_has_its_place_and_committed_results_come_from_files():
    """A suite (a folder of pipelines/ with a params.yaml) has a page that includes its
    params.yaml and, where one is committed, its reports/curves.md; every script under
    benchmarks/ is on the benchmarks page."""
    suites = {"default": ROOT} | {p.parent.name: p.parent
                                  for p in (ROOT / "pipelines").glob("*/params.yaml")}
    for name, folder in suites.items():
        page = ROOT / "docs" / "suites" / f"{name}.md"
        assert page.is_file(), f"suite {name} has no page {page.relative_to(ROOT)}"
        text = page.read_text()
        prefix = folder.relative_to(ROOT).as_posix() + "/" if folder != ROOT else ""
        assert f'--8<-- "{prefix}params.yaml"' in text, name
        if (folder / "reports" / "curves.md").is_file():
            assert f'--8<-- "{prefix}reports/curves.md' in text, name
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for script in sorted((ROOT / "benchmarks").glob("*.*")):
        if script.suffix in (".py", ".sh"):
            assert script.name in benchmarks, f"benchmarks/{script.name} is not on the page"


def test_the_anchors_are_validated_so_a_missing_one_fails_the_strict_build(tmp_path):
    """A copy of the site's validation settings over two pages: a link to an anchor that the
    target page lacks fails ``mkdocs build --strict``, the same link to one it has builds."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("no MkDocs (pip install -e '.[docs]')")
    real = _load_config(CONFIG)
    assert real["validation"]["links"]["anchors"] == "warn"  # --strict: a warning fails
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "concepts.md").write_text("# Concepts\n\n## A run\n\nOne (method, level, seed).\n")
    config = {"site_name": "anchors", "docs_dir": "docs", "validation": real["validation"],
              "markdown_extensions": [{"toc": {"permalink": True}}],
              "nav": ["index.md", "concepts.md"]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))

    (docs / "index.md").write_text("# Home\n\n[A run](concepts.md#a-run)\n")
    good = mkdocs("build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), cwd=tmp_path)
    assert good.returncode == 0, good.stdout + good.stderr

    (docs / "index.md").write_text("# Home\n\n[A run](concepts.md#a-rnu)\n")
    bad = mkdocs("build", "--strict", "-f", str(tmp_path / "mkdocs.yml"), cwd=tmp_path)
    assert bad.returncode != 0
    output = bad.stdout + bad.stderr
    assert ("Doc file 'index.md' contains a link 'concepts.md#a-rnu', but the doc "
            "'concepts.md' does not contain an anchor '#a-rnu'.") in output, output
    assert "Aborted with 1 warnings in strict mode!" in output, output


def _chromium() -> str | None:
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from screenshots import chromium  # the MLflow screenshots' own way to find it
    finally:
        sys.path.pop(0)
    return chromium()


@pytest.fixture
def served(site):
    """The built site on a free port of 127.0.0.1: its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no line per request in the test's output
        pass


def test_the_pages_render_in_chromium_with_title_and_navigation(served, tmp_path):
    """The index, a method's page and an API page in headless Chromium: each shows its title,
    its heading and the site's navigation, and is captured as a 1280 x 800 PNG."""
    browser_path = _chromium()
    if browser_path is None:
        pytest.skip("no Chromium (apt-get install chromium, or set CHROMIUM)")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("no Playwright (pip install playwright; it drives the system Chromium)")
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from screenshots import CHROMIUM_FLAGS
    finally:
        sys.path.pop(0)
    out = ROOT / "docs" / "screenshots" if os.environ.get(
        "SPARSEBENCH_DOCS_SCREENSHOTS") else tmp_path
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=CHROMIUM_FLAGS,
                                     headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            for path, heading, name in PAGES:
                page.goto(served + path)
                page.locator("h1").first.wait_for(timeout=30_000)
                assert page.title().endswith("sparsebench"), page.title()
                assert page.locator("h1").first.inner_text().strip().rstrip("¶") == heading
                nav = page.locator("nav.md-nav--primary")
                for entry in ("Quick start", "Concepts", "Methods", "Suites", "API reference"):
                    assert nav.get_by_text(entry, exact=True).count() >= 1, (path, entry)
                if path.startswith("api/"):  # mkdocstrings rendered the docstrings
                    assert page.locator('[id="sparsebench.optim.grda.GRDA"]').count() == 1
                    assert page.get_by_text("Examples:").count() >= 4
                png = out / f"{name}.png"
                page.screenshot(path=str(png))
                data = png.read_bytes()
                assert data[:8] == b"\x89PNG\r\n\x1a\n"
                width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24],
                                                                                    "big")
                assert (width, height) == (1280, 800)
        finally:
            browser.close()


def public_modules(name: str) -> list[str]:
    """The public modules of a package: the package and each module not starting with an
    underscore; a plain module is its own list."""
    package = importlib.import_module(name)
    if not hasattr(package, "__path__"):
        return [name]
    return [name] + [f"{name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                     if not m.name.startswith("_")]


def run_doctests(names: list[str]) -> dict[str, int]:
    """Run the docstrings' examples of the modules ``names`` on one torch thread; assert that
    none fails and return the examples run per module."""
    import torch

    attempted = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only waits for a busy core
    try:
        for name in names:
            module = importlib.import_module(name)
            result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE,
                                     verbose=False, report=True)
            assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
            attempted[name] = result.attempted
    finally:
        torch.set_num_threads(threads)
    return attempted


#: per package: the modules that must have examples (None: every public one; each optimizer,
#: each method and `build_method` and `masked_retrain` has one; the checkpoint API's `save`,
#: `load`, `verify`, `inspect`), and the fewest examples the package may have in all
DOCTESTS = {
    "sparsebench.optim": (None, 60),
    "sparsebench.methods": (None, 200),
    "sparsebench.checkpoint": (("sparsebench.checkpoint.reader",
                                "sparsebench.checkpoint.writer"), 60),
    "sparsebench.run": (("sparsebench.run",), 10),
}


@pytest.mark.parametrize("package", sorted(DOCTESTS))
def test_the_docstrings_examples_pass_as_doctests(package):
    """The docstrings' examples of the package's public modules pass as doctests."""
    required, least = DOCTESTS[package]
    attempted = run_doctests(public_modules(package))
    for name in required or attempted:
        assert attempted[name], f"{name} has no example"
    assert sum(attempted.values()) >= least, attempted
