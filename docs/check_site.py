"""Opens the built documentation in a real browser and checks its links.

    python docs/check_site.py            # after make docs

Serves ``docs/_build/html`` on 127.0.0.1 and drives headless Chromium
(Debian's ``chromium`` package, through Playwright, whose own browser
downloads are not needed) over every page of the site. It

- takes a screenshot of the index, the API reference and the benchmarks
  page into ``--screenshots``;
- collects every link of every page as the browser resolves it, and checks
  that each link into the site answers HTTP 200 and that its anchor, if it
  has one, is an element id (or name) of the page it points to;
- checks that every image of every page loaded, and that no page raised a
  JavaScript error.

Requests to any other host are blocked (the pages load MathJax from a CDN,
which is not checked); external links are counted, not followed. Exits 1
with a list of the failures, else prints a summary and exits 0.
"""
import argparse
import functools
import http.server
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu',
                 '--disable-background-networking',
                 '--disable-component-update', '--disable-sync',
                 '--no-first-run']
# The pages whose screenshots are taken.
SHOTS = {'index': 'index.html', 'api': 'api.html',
         'benchmarks': 'benchmarks.html'}

_LINKS = '''() => Array.from(document.querySelectorAll('a[href]'),
                             a => a.href)'''
_IDS = '''() => Array.from(document.querySelectorAll('[id], a[name]'),
                           e => e.id || e.getAttribute('name'))'''
_BROKEN_IMAGES = '''() => Array.from(document.images)
    .filter(img => !img.complete || img.naturalWidth === 0)
    .map(img => img.getAttribute('src'))'''


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # The browser drops connections it no longer needs when it moves to
        # the next page; anything else is reported.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serve(root: Path) -> http.server.ThreadingHTTPServer:
    """A server of ``root`` on a free port of 127.0.0.1, in a thread."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = _Server(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def status(url: str) -> int:
    """The HTTP status of ``url``."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def check(html: Path, screenshots: Path, chromium: str) -> list[str]:
    """Visits every page of the site at ``html``; returns the failures."""
    pages = sorted(p.relative_to(html).as_posix()
                   for p in html.rglob('*.html')
                   if not p.relative_to(html).parts[0].startswith('_'))
    server = serve(html)
    base = f'http://127.0.0.1:{server.server_address[1]}/'
    failures, links, ids, statuses = [], {}, {}, {}
    external, blocked = set(), set()
    screenshots.mkdir(parents=True, exist_ok=True)

    def route(request_route) -> None:
        url = request_route.request.url
        if url.startswith(base):
            request_route.continue_()
        else:
            blocked.add(urlsplit(url).netloc)
            request_route.abort()

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={'width': 1280, 'height': 900})
            page.route('**/*', route)
            errors = []
            page.on('pageerror', lambda error: errors.append(str(error)))
            for name in pages:
                errors.clear()
                response = page.goto(base + name, wait_until='load')
                if response is None or response.status != 200:
                    failures.append(f'{name}: HTTP '
                                    f'{response and response.status}')
                    continue
                links[name] = page.evaluate(_LINKS)
                ids[name] = set(page.evaluate(_IDS))
                for src in page.evaluate(_BROKEN_IMAGES):
                    failures.append(f'{name}: image {src} did not load')
                for error in errors:
                    failures.append(f'{name}: JavaScript error: {error}')
                for shot, shot_page in SHOTS.items():
                    if name == shot_page:
                        page.screenshot(path=str(screenshots / f'{shot}.png'))
            browser.close()

        for name, hrefs in links.items():
            for href in hrefs:
                if not href.startswith(base):
                    if href.startswith(('http:', 'https:')):
                        external.add(href)
                    continue
                target, fragment = urldefrag(href)
                path = target[len(base):] or 'index.html'
                if path.endswith('/'):
                    path += 'index.html'
                if path not in statuses:
                    statuses[path] = status(base + path)
                if statuses[path] != 200:
                    failures.append(f'{name}: link {href} answers '
                                    f'HTTP {statuses[path]}')
                elif fragment and path in ids and fragment not in ids[path]:
                    failures.append(f'{name}: link {href}: no element '
                                    f'#{fragment} on {path}')
    finally:
        server.shutdown()
    internal = sum(href.startswith(base) for hrefs in links.values()
                   for href in hrefs)
    print(f'{len(links)} pages, {internal} internal links '
          f'({len(statuses)} targets), {len(external)} external links '
          f'not followed; requests blocked to: '
          f'{", ".join(sorted(blocked)) or "none"}; screenshots: '
          f'{", ".join(str(screenshots / f"{s}.png") for s in SHOTS)}')
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--html', type=Path, default=DOCS / '_build' / 'html',
                        help='the built site (default: %(default)s)')
    parser.add_argument('--screenshots', type=Path,
                        default=DOCS / '_build' / 'screenshots',
                        help='where the screenshots go (default: '
                        '%(default)s)')
    parser.add_argument('--chromium', default='/usr/bin/chromium',
                        help='the Chromium executable (default: '
                        '%(default)s)')
    args = parser.parse_args()
    if not (args.html / 'index.html').is_file():
        print(f'check_site: no {args.html}/index.html; run make docs first',
              file=sys.stderr)
        return 2
    failures = check(args.html, args.screenshots, args.chromium)
    for failure in failures:
        print(f'FAIL {failure}')
    print(f'{len(failures)} failures')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
