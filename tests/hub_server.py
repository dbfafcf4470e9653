"""A local stand-in for the Hugging Face Hub that the real ``huggingface_hub`` client talks to.

Tests never reach huggingface.co, yet the app's Hub path (download with progress, gated models,
tokens, pushes) must run for real. This threaded HTTP server answers the endpoints that path uses,
with the headers the client checks (``X-Repo-Commit``, ``ETag``/``X-Linked-Etag``, ``X-Linked-Size``,
``Content-Length``, ``X-Error-Code``/``X-Error-Message``), the way the Hub answers them:

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes), ``/tree/{rev}``,
  ``POST /paths-info/{rev}``, ``GET /auth-check``, ``GET /api/whoami-v2``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}`` (``Range`` honoured), also under ``/spaces/``;
- ``POST /api/repos/create``, ``/preupload/{rev}``, ``/commit/{rev}`` (ndjson, inline files),
  ``/api/validate-yaml``: enough for ``HfApi.create_repo`` + ``upload_folder`` (services.publish).

Repos (built once per session by :meth:`FakeHub.with_test_repos`):

- ``tiny-org/tiny-chat`` (:data:`PUBLIC_REPO`): public; a random-weight Llama (hidden 64, 2 layers,
  ~13 MB) with the bundled SmolLM2 tokenizer and chat template, plus a README and .gitattributes.
- ``gated-org/tiny-gated`` (:data:`GATED_REPO`): the same files, gated. Its info and file list are
  public (as on the Hub); file downloads and ``auth-check`` answer 401 without a token and 403 with a
  token whose account has not accepted the licence (``X-Error-Code: GatedRepo``).
- ``BAAI/bge-small-en-v1.5`` (:data:`EMBEDDER_REPO`): a stand-in holding the bundled MiniLM
  sentence-transformers files (384-d like the real one), so Hub embedders can be loaded offline.
- Any other id: ``RepoNotFound`` (401 without a token, 404 with a valid one, as on the Hub).

Tokens: :data:`READER_TOKEN` (read; licence accepted), :data:`NO_LICENCE_TOKEN` (read; licence not
accepted), :data:`WRITER_TOKEN` (write; licence accepted). Any other bearer token is refused as the Hub
refuses a revoked one (401, ``Invalid credentials in Authorization header``).

Every request is recorded in :attr:`FakeHub.requests` as method, path and an auth *label*
(``none``/``reader``/``writer``/``nolicence``/``invalid``): the token value is never stored.
:attr:`FakeHub.bytes_per_second` slows file bodies down to watch progress mid-download.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

PUBLIC_REPO = "tiny-org/tiny-chat"
GATED_REPO = "gated-org/tiny-gated"
EMBEDDER_REPO = "BAAI/bge-small-en-v1.5"
READER_TOKEN = "hf_test_reader"
NO_LICENCE_TOKEN = "hf_test_nolicence"
WRITER_TOKEN = "hf_test_writer"
TOKENS = {READER_TOKEN: "reader", NO_LICENCE_TOKEN: "nolicence", WRITER_TOKEN: "writer"}
USER = "test-user"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
LFS_FROM_BYTES = 1 << 20  # files this big, or weights, are served as LFS files (sha256 ETag, X-Linked-*)
CHUNK = 64 * 1024


@dataclass
class RepoFile:
    """One file of a repo: its bytes (or a file on disk, read when served) and the ids the Hub gives it."""

    content: bytes | Path
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @classmethod
    def of(cls, path: str, content: bytes | Path) -> RepoFile:
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = len(data) >= LFS_FROM_BYTES or path.endswith((".safetensors", ".bin"))
        return cls(content, len(data), hashlib.sha256(data).hexdigest(), blob, lfs)

    def read(self) -> bytes:
        return self.content.read_bytes() if isinstance(self.content, Path) else self.content

    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class Repo:
    """A repo at its single commit (a commit made through the API replaces the file set and the sha)."""

    repo_id: str
    repo_type: str = "model"
    gated: bool = False
    private: bool = False
    files: dict[str, RepoFile] = field(default_factory=dict)
    sha: str = ""

    def set_files(self, files: dict[str, bytes | Path]) -> None:
        self.files = {path: RepoFile.of(path, content) for path, content in sorted(files.items())}
        self.recommit()

    def recommit(self) -> None:
        digest = hashlib.sha1(self.repo_id.encode())
        for path, entry in sorted(self.files.items()):
            digest.update(f"{path}\0{entry.git_sha1}\n".encode())
        self.sha = digest.hexdigest()

    def folders(self) -> set[str]:
        return {"/".join(path.split("/")[:i]) for path in self.files for i in range(1, path.count("/") + 1)}


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it; ``auth`` is a label, never the token."""

    method: str
    path: str
    auth: str
    status: int


class FakeHub:
    """The server: start it (or use it as a context manager), point the client at :attr:`url`."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Recorded] = []
        self.bytes_per_second: float | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------------------- life cycle

    @classmethod
    def with_test_repos(cls) -> FakeHub:
        """A server with the tiny public and gated chat models and the embedder stand-in."""
        hub = cls()
        chat = build_tiny_chat_files()
        hub.add_repo(PUBLIC_REPO, chat)
        hub.add_repo(GATED_REPO, chat, gated=True)
        hub.add_repo(EMBEDDER_REPO, embedder_files())
        return hub

    def add_repo(self, repo_id: str, files: dict[str, bytes | Path], *, repo_type: str = "model",
                 gated: bool = False, private: bool = False) -> Repo:
        repo = Repo(repo_id, repo_type, gated, private)
        repo.set_files(files)
        with self._lock:
            self.repos[(repo_type, repo_id.lower())] = repo
        return repo

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------------------ for the tests

    def env(self) -> dict[str, str]:
        """Environment for a subprocess (the app, a worker, a CLI) that should use this Hub."""
        return {"HF_ENDPOINT": self.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def connect(self, monkeypatch: Any) -> None:
        """Point this process's ``huggingface_hub`` at the server and switch offline mode off.

        huggingface_hub reads ``HF_ENDPOINT``/``HF_HUB_OFFLINE`` into its constants at import time,
        so setting the environment would not reach a client that is already imported.
        """
        from huggingface_hub import constants

        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        template = self.url + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def record(self, entry: Recorded) -> None:
        with self._lock:
            self.requests.append(entry)

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_for(self, repo_id: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if f"/{repo_id}/" in r.path + "/"]

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        with self._lock:
            return self.repos.get((repo_type, repo_id.lower()))


# ------------------------------------------------------------------------------------ test repos


def build_tiny_chat_files() -> dict[str, bytes | Path]:
    """A random-weight Llama small enough to download in a blink, with SmolLM2's tokenizer and template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from engine.models import bundled_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_dir()), local_files_only=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder = Path(tempfile.mkdtemp(prefix="fake-hub-"))
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        files: dict[str, bytes | Path] = {p.relative_to(folder).as_posix(): p.read_bytes()
                                          for p in folder.rglob("*") if p.is_file()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n# tiny-chat\nRandom weights, for tests.\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    return files


def embedder_files() -> dict[str, bytes | Path]:
    """The bundled MiniLM sentence-transformers folder, served from disk as it is."""
    from rag.embedders import bundled_model_dir

    root = bundled_model_dir()
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------- handler

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_API = r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"^/api/whoami-v2$"), "whoami"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("GET", re.compile(_API + r"/auth-check(/write)?$"), "auth_check"),
    ("GET", re.compile(_API + r"/tree/([^/]+)(?:/(.*))?$"), "tree"),
    ("POST", re.compile(_API + r"/paths-info/([^/]+)$"), "paths_info"),
    ("POST", re.compile(_API + r"/preupload/([^/]+)$"), "preupload"),
    ("POST", re.compile(_API + r"/commit/([^/]+)$"), "commit"),
    ("GET", re.compile(_API + r"(?:/revision/([^/]+))?$"), "info"),
    ("GET", re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$"), "resolve"),
    ("HEAD", re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$"), "resolve"),
]


class HubRefusal(Exception):
    """An error answer: status, ``X-Error-Code`` and message (sent as header and JSON body)."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_hub: FakeHub

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output is for the tests."""

    # ------------------------------------------------------------------------------ dispatching

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
        auth = self._auth_label()
        status = 500
        try:
            if auth == "invalid":
                raise HubRefusal(401, INVALID_CREDENTIALS)
            for verb, pattern, name in ROUTES:
                match = pattern.match(path)
                if match and verb == method:
                    status = getattr(self, f"_{name}")(match.groups(), query, body, auth, method)
                    break
            else:
                raise HubRefusal(404, f"Sorry, we can't find the page you are looking for ({method} {path}).")
        except HubRefusal as refusal:
            status = refusal.status
            self._refuse(refusal, head=method == "HEAD")
        finally:
            self.server_hub.record(Recorded(method, path, auth, status))

    def _auth_label(self) -> str:
        header = self.headers.get("Authorization") or ""
        if not header:
            return "none"
        token = header.removeprefix("Bearer ").strip()
        return TOKENS.get(token, "invalid")

    # --------------------------------------------------------------------------------- answers

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, *, head: bool = False,
              content_type: str = "application/json") -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)
        return status

    def _json(self, data: Any, status: int = 200) -> int:
        return self._send(status, json.dumps(data).encode())

    def _refuse(self, refusal: HubRefusal, *, head: bool) -> None:
        headers = {"X-Error-Message": refusal.message}
        if refusal.code:
            headers["X-Error-Code"] = refusal.code
        if refusal.commit:
            headers["X-Repo-Commit"] = refusal.commit
        self._send(refusal.status, json.dumps({"error": refusal.message}).encode(), headers, head=head)

    # ------------------------------------------------------------------------------- repo rules

    def _repo(self, kind: str | None, repo_id: str, auth: str) -> Repo:
        repo = self.server_hub.repo(repo_id, _TYPES.get(kind or "models", "model"))
        if repo is None or (repo.private and auth not in ("writer",)):
            raise HubRefusal(401 if auth == "none" else 404, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _gate(repo: Repo, auth: str) -> None:
        if not repo.gated or auth in ("reader", "writer"):
            return
        if auth == "none":
            raise HubRefusal(401, f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                                  "authenticated to access it. Please log in.", "GatedRepo")
        raise HubRefusal(403, f"Access to model {repo.repo_id} is restricted and you are not in the authorized "
                              f"list. Visit https://huggingface.co/{repo.repo_id} to ask for access.", "GatedRepo")

    @staticmethod
    def _revision(repo: Repo, revision: str | None) -> None:
        if revision not in (None, "main", repo.sha):
            raise HubRefusal(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _require_write(auth: str) -> None:
        if auth == "none":
            raise HubRefusal(401, "Invalid username or password.")
        if auth != "writer":
            raise HubRefusal(403, "You don't have the rights to create or write to this repo: the token is read-only.")

    # -------------------------------------------------------------------------------- endpoints

    def _whoami(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        if auth == "none":
            raise HubRefusal(401, "Invalid username or password.")
        role = "write" if auth == "writer" else "read"
        return self._json({"type": "user", "id": "0" * 24, "name": USER, "fullname": "Test User", "orgs": [],
                           "auth": {"type": "access_token", "accessToken": {"displayName": "tests", "role": role}}})

    def _auth_check(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        repo = self._repo(groups[0], groups[1], auth)
        self._gate(repo, auth)
        if groups[2]:
            self._require_write(auth)
        return self._json({"ok": True})

    def _info(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        repo = self._repo(groups[0], groups[1], auth)
        self._revision(repo, groups[2])
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [{"rfilename": path, **(self._blob(entry) if blobs else {})} for path, entry in repo.files.items()]
        info: dict[str, Any] = {
            "_id": repo.sha[:24], "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": repo.sha,
            "private": repo.private, "gated": "manual" if repo.gated else False, "disabled": False,
            "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
            "tags": ["transformers", "safetensors"], "library_name": "transformers", "siblings": siblings,
            "usedStorage": sum(entry.size for entry in repo.files.values()), "downloads": 0, "likes": 0,
        }
        if repo.repo_type == "space":
            info.update(sdk="gradio", runtime={"stage": "BUILDING", "hardware": {"current": None, "requested": None}})
        return self._json(info)

    @staticmethod
    def _blob(entry: RepoFile) -> dict[str, Any]:
        data: dict[str, Any] = {"size": entry.size, "blobId": entry.git_sha1}
        if entry.lfs:
            data["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": 134}
        return data

    @staticmethod
    def _entry(path: str, entry: RepoFile | None) -> dict[str, Any]:
        if entry is None:
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}
        data: dict[str, Any] = {"type": "file", "oid": entry.git_sha1, "size": entry.size, "path": path}
        if entry.lfs:
            data["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": 134}
        return data

    def _tree(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        repo = self._repo(groups[0], groups[1], auth)
        self._revision(repo, groups[2])
        base = (groups[3] or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{base}/" if base else ""
        entries = [(p, repo.files.get(p)) for p in sorted(set(repo.files) | repo.folders()) if p.startswith(prefix)]
        if not recursive:
            entries = [(p, e) for p, e in entries if "/" not in p[len(prefix):]]
        return self._json([self._entry(p, e) for p, e in entries])

    def _paths_info(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        repo = self._repo(groups[0], groups[1], auth)
        self._revision(repo, groups[2])
        asked = parse_qs(body.decode()).get("paths", [])
        folders = repo.folders()
        return self._json([self._entry(p, repo.files.get(p)) for p in asked if p in repo.files or p in folders])

    def _resolve(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        repo = self._repo(groups[0], groups[1], auth)
        self._gate(repo, auth)
        self._revision(repo, groups[2])
        entry = repo.files.get(groups[3])
        if entry is None:
            raise HubRefusal(404, "Entry not found", "EntryNotFound", commit=repo.sha)
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{entry.etag()}"', "Accept-Ranges": "bytes"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        data, status = entry.read(), 200
        ranged = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
        if ranged and method == "GET":
            start = int(ranged.group(1))
            headers["Content-Range"] = f"bytes {start}-{entry.size - 1}/{entry.size}"
            data, status = data[start:], 206
        if method == "HEAD":
            return self._send(status, data, headers, head=True, content_type="application/octet-stream")
        return self._stream(status, data, headers)

    def _stream(self, status: int, data: bytes, headers: dict[str, str]) -> int:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        rate = self.server_hub.bytes_per_second
        for start in range(0, len(data), CHUNK):
            self.wfile.write(data[start:start + CHUNK])
            if rate:
                time.sleep(CHUNK / rate)
        return status

    def _create_repo(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        self._require_write(auth)
        payload = json.loads(body or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.server_hub.url}/{prefix}{repo_id}"
        if self.server_hub.repo(repo_id, repo_type) is not None:
            return self._json({"error": "You already created this repo", "url": url}, 409)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        self.server_hub.add_repo(repo_id, {".gitattributes": b""}, repo_type=repo_type, private=private)
        return self._json({"url": url, "name": repo_id})

    def _validate_yaml(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        return self._json({"errors": [], "warnings": []})

    def _preupload(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        self._require_write(auth)
        repo = self._repo(groups[0], groups[1], auth)
        files = json.loads(body or b"{}").get("files", [])
        return self._json({"files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": repo.files[f["path"]].git_sha1 if f["path"] in repo.files else None} for f in files]})

    def _commit(self, groups: tuple, query: dict, body: bytes, auth: str, method: str) -> int:
        self._require_write(auth)
        repo = self._repo(groups[0], groups[1], auth)
        for line in body.decode().splitlines():
            item = json.loads(line) if line.strip() else {}
            key, value = item.get("key"), item.get("value") or {}
            if key == "file":
                repo.files[value["path"]] = RepoFile.of(value["path"], base64.b64decode(value["content"]))
            elif key == "deletedFile":
                repo.files.pop(value["path"], None)
            elif key == "deletedFolder":
                repo.files = {p: e for p, e in repo.files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key == "lfsFile":
                raise HubRefusal(422, "This test Hub takes inline files only (preupload answers 'regular').")
        repo.recommit()
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return self._json({"commitUrl": f"{self.server_hub.url}/{prefix}{repo.repo_id}/commit/{repo.sha}",
                           "commitOid": repo.sha, "success": True, "pullRequestUrl": None})
