"""Make the published asv dashboard self-contained: its JavaScript and CSS served from the html dir.

asv's ``index.html`` loads jQuery, flot, Bootstrap and three small plugins from CDNs, so on a
machine without internet access (or with Chromium's background networking off) the page
only says "Can not determine continental origin of swallow". This script fetches the same
libraries from the npm registry (``npm pack``, cached in ``benchmarks/.asv/vendor``), copies
the files into ``<html dir>/vendor/`` and points ``index.html`` at them. Run it after every
``asv publish`` (``run.sh publish`` and ``screenshot.sh`` do); it is idempotent.

    python benchmarks/vendor_dashboard.py [HTML_DIR] [--strict]

Without npm (or offline) it leaves the page as it is and says so; ``--strict`` makes that an
error (exit 1).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".asv" / "vendor"

#: CDN address (regex) -> (npm package@version, file in the package). Versions are asv 0.6's;
#: stupidtable 1.0.1 is not on npm, 1.1.3 has the same interface.
CDN = (
    (r"https://code\.jquery\.com/jquery-(\d[\w.]*)\.min\.js", "jquery@{0}", "dist/jquery.min.js"),
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/([\w.]+)/jquery\.flot\.min\.js", "flot@{0}", "jquery.flot.js"),
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/flot/([\w.]+)/jquery\.flot\.(\w+)\.min\.js", "flot@{0}",
     "jquery.flot.{1}.js"),
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/stupidtable/[\w.]+/stupidtable\.min\.js", "stupid-table-plugin@1.1.3",
     "stupidtable.min.js"),
    (r"https://cdnjs\.cloudflare\.com/ajax/libs/blueimp-md5/([\w.]+)/(js/[\w.]+)", "blueimp-md5@{0}", "{1}"),
    (r"https://cdn\.jsdelivr\.net/npm/((?:@[\w.-]+/)?[\w.-]+@[\w.-]+)/([\w./-]+)", "{0}", "{1}"),
)
#: Files a vendored file needs beside it (Bootstrap's CSS loads its icon font from ../fonts/).
COMPANIONS = {"dist/css/bootstrap.min.css": "dist/fonts/"}

TAG = re.compile(r"<(script|link)\b[^>]*?\b(src|href)=\"(https?://[^\"]+)\"[^>]*>")


def resolve(url: str):
    """(npm spec, file in the package) for a CDN address, or ``None``."""
    for pattern, spec, path in CDN:
        match = re.fullmatch(pattern, url)
        if match:
            return spec.format(*match.groups()), path.format(*match.groups())
    return None


def package(spec: str) -> Path:
    """The npm tarball of ``spec`` (name@version), from the cache or fetched with ``npm pack``."""
    CACHE.mkdir(parents=True, exist_ok=True)
    name, version = spec.rsplit("@", 1)
    tarball = CACHE / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed")
        result = subprocess.run([npm, "pack", spec, "--pack-destination", str(CACHE), "--silent"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not tarball.exists():
            raise RuntimeError(f"npm pack {spec} failed: {(result.stderr or result.stdout).strip()[-300:]}")
    return tarball


def extract(tarball: Path, path: str, dest_root: Path) -> None:
    """Copy ``package/<path>`` (a file, or every file under a folder ending in /) to ``dest_root/<path>``."""
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and (
            m.name == f"package/{path}" or (path.endswith("/") and m.name.startswith(f"package/{path}")))]
        if not members:
            raise RuntimeError(f"{tarball.name} has no {path}")
        for member in members:
            target = dest_root / member.name[len("package/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def vendor(html_dir: Path) -> list[str]:
    """Rewrite ``html_dir/index.html`` to local copies; return the addresses left external."""
    index = html_dir / "index.html"
    text = index.read_text(encoding="utf-8")
    left = []

    def local(match: re.Match) -> str:
        tag, url = match.group(0), match.group(3)
        found = resolve(url)
        if found is None:
            left.append(url)
            return tag
        spec, path = found
        root = html_dir / "vendor" / spec.replace("/", "_")
        if not (root / path).exists():
            tarball = package(spec)
            extract(tarball, path, root)
            if path in COMPANIONS:
                extract(tarball, COMPANIONS[path], root)
        rel = (root / path).relative_to(html_dir).as_posix()
        tag = tag.replace(url, rel)
        return re.sub(r'\s(integrity|crossorigin|referrerpolicy)="[^"]*"', "", tag)

    index.write_text(TAG.sub(local, text), encoding="utf-8")
    return left


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", nargs="?", default=str(HERE / ".asv" / "html"))
    parser.add_argument("--strict", action="store_true", help="fail when a library cannot be made local")
    args = parser.parse_args(argv)
    html_dir = Path(args.html_dir)
    if not (html_dir / "index.html").exists():
        print(f"vendor_dashboard: no {html_dir / 'index.html'}; run asv publish first", file=sys.stderr)
        return 2
    try:
        left = vendor(html_dir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"vendor_dashboard: {exc}; the dashboard still loads its libraries from the internet",
              file=sys.stderr)
        return 1 if args.strict else 0
    if left:
        print(f"vendor_dashboard: left external: {', '.join(left)}", file=sys.stderr)
        return 1 if args.strict else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
