"""A Hugging Face Hub on loopback for the tests: the few endpoints huggingface_hub calls to read a model's
files, serving folders on disk. Point `HF_ENDPOINT` at `FakeHub.url`.

- GET  /api/models/{repo}[/revision/{rev}]        model info: sha, siblings (with sizes)
- GET  /api/models/{repo}/tree/{rev}[/{path}]     the file list (recursive)
- HEAD/GET /{repo}/resolve/{rev}/{file}           a file, with X-Repo-Commit and ETag; GET honours Range

Unknown repos, revisions and files answer 404 with the hub's X-Error-Code. Every request is logged as
(method, path, Range header) so tests can see what was read before what.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self, repos: dict[str, Path], tags: dict[str, dict[str, str]] | None = None):
        self.repos = {r: Path(p) for r, p in repos.items()}
        self.sha = {r: hashlib.sha1(r.encode()).hexdigest() for r in repos}
        self.tags = tags or {}  # repo -> {tag: "main"}: extra revision names
        self.log: list[tuple[str, str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hub._serve(self, body=True)

            def do_HEAD(self):
                hub._serve(self, body=False)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------------------------------
    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _revision_ok(self, repo: str, rev: str) -> bool:
        return rev in ("main", self.sha[repo]) or rev in self.tags.get(repo, {})

    def _serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlparse(req.path).path)
        self.log.append((req.command, path, req.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+?))?/?", path):
            return self._info(req, m[1], m[2] or "main", body)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            return self._tree(req, m[1], m[2], body)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._file(req, m[1], m[2], m[3], body)
        return self._error(req, 404, "RepoNotFound")

    def _check(self, req, repo: str, rev: str) -> bool:
        if repo not in self.repos:
            self._error(req, 404, "RepoNotFound")
            return False
        if not self._revision_ok(repo, rev):
            self._error(req, 404, "RevisionNotFound")
            return False
        return True

    def _info(self, req, repo: str, rev: str, body: bool) -> None:
        if not self._check(req, repo, rev):
            return
        siblings = [{"rfilename": n, "size": p.stat().st_size, "blobId": _blob(p)} for n, p in self.files(repo).items()]
        info = {"id": repo, "modelId": repo, "sha": self.sha[repo], "private": False, "gated": False}
        self._json(req, {**info, "disabled": False, "tags": [], "siblings": siblings}, body)

    def _tree(self, req, repo: str, rev: str, body: bool) -> None:
        if not self._check(req, repo, rev):
            return
        entries = [
            {"type": "file", "oid": _blob(p), "size": p.stat().st_size, "path": n} for n, p in self.files(repo).items()
        ]
        self._json(req, entries, body)

    def _file(self, req, repo: str, rev: str, name: str, body: bool) -> None:
        if not self._check(req, repo, rev):
            return
        f = self.files(repo).get(name)
        if f is None:
            return self._error(req, 404, "EntryNotFound", repo_commit=self.sha[repo])
        data = f.read_bytes()
        status, part = 200, data
        rng = req.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())):
            start = int(m[1])
            end = min(int(m[2]) if m[2] else len(data) - 1, len(data) - 1)
            status, part = 206, data[start : end + 1]
        req.send_response(status)
        req.send_header("X-Repo-Commit", self.sha[repo])
        req.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        req.send_header("Accept-Ranges", "bytes")
        req.send_header("Content-Type", "application/octet-stream")
        if status == 206:
            req.send_header("Content-Range", f"bytes {start}-{start + len(part) - 1}/{len(data)}")
        req.send_header("Content-Length", str(len(part)))
        req.end_headers()
        if body:
            req.wfile.write(part)

    def _json(self, req, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        req.send_response(200)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)

    def _error(self, req, status: int, code: str, repo_commit: str | None = None) -> None:
        data = json.dumps({"error": code}).encode()
        req.send_response(status)
        req.send_header("X-Error-Code", code)
        req.send_header("X-Error-Message", code)
        if repo_commit:
            req.send_header("X-Repo-Commit", repo_commit)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)


def _blob(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def build_cache(cache: Path, repo: str, folder: Path, revisions: tuple[str, ...] = ("main",)) -> str:
    """A Hugging Face cache entry for `repo` as huggingface_hub lays it out (refs/REV -> commit,
    snapshots/COMMIT/files), with `folder`'s files; returns the commit."""
    sha = hashlib.sha1(repo.encode()).hexdigest()
    storage = cache / ("models--" + repo.replace("/", "--"))
    snap = storage / "snapshots" / sha
    snap.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file():
            (snap / p.name).write_bytes(p.read_bytes())
    (storage / "refs").mkdir(exist_ok=True)
    for rev in revisions:
        (storage / "refs" / rev).write_text(sha)
    return sha
