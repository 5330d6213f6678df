"""A loopback stand-in for the few Hugging Face Hub endpoints that `pixelmill push` reaches through
`huggingface_hub` (read from its source, `hf_api.py`, `_commit_api.py`, `lfs.py`): nothing more.

- `POST /api/repos/create` {name, organization, type, visibility}: 200 {url}, or 409 {url} when it exists;
- `POST /api/validate-yaml` {content, repoType}: the card's YAML header parsed (400 when it is not YAML);
- `POST /api/datasets/{owner}/{name}/preupload/{rev}`: `lfs` for binary files (as the Hub does for Parquet),
  `regular` for text;
- `POST /datasets/{owner}/{name}.git/info/lfs/objects/batch`: the Git LFS batch API, `basic` transfer, an upload
  and a verify action per object; `PUT /lfs/{oid}` stores the bytes (their sha256 must be the oid);
  `POST /lfs-verify` checks them;
- `POST /api/datasets/{owner}/{name}/commit/{rev}`: the NDJSON commit (header, `file` with base64 content,
  `lfsFile` naming an uploaded oid); the repository's files are then what the commit says.

Every API call needs `Authorization: Bearer <token>` with the one token it accepts (401 otherwise); `deny`
answers 403 to repository creation. The Xet transfer the real Hub prefers is not served: clients must run with
`HF_HUB_DISABLE_XET=1`, which makes `huggingface_hub` use the Git LFS protocol above.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import yaml
from aiohttp import web


@dataclass
class Repo:
    repo_id: str
    type: str
    visibility: str | None
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)


@dataclass
class HubStandIn:
    token: str
    deny: bool = False
    url: str = ""
    repos: dict[str, Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)  # "METHOD /path" of every request, in order

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._log_and_auth], client_max_size=1 << 30)
        app.router.add_post("/api/repos/create", self._create)
        app.router.add_post("/api/validate-yaml", self._validate_yaml)
        app.router.add_post("/api/datasets/{owner}/{name}/preupload/{rev}", self._preupload)
        app.router.add_post("/datasets/{owner}/{name}.git/info/lfs/objects/batch", self._lfs_batch)
        app.router.add_put("/lfs/{oid}", self._lfs_put)
        app.router.add_post("/lfs-verify", self._lfs_verify)
        app.router.add_post("/api/datasets/{owner}/{name}/commit/{rev}", self._commit)
        return app

    @web.middleware
    async def _log_and_auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.calls.append(f"{request.method} {request.path}")
        if request.path.startswith(("/api/", "/datasets/")) and \
                request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "Invalid credentials in Authorization header"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    def _repo(self, request: web.Request) -> Repo:
        repo = self.repos.get(f"{request.match_info['owner']}/{request.match_info['name']}")
        if repo is None:
            raise web.HTTPNotFound(text='{"error": "Repository not found"}', content_type="application/json")
        return repo

    async def _create(self, request: web.Request) -> web.Response:
        if self.deny:
            return web.json_response({"error": "You don't have the rights to create a dataset under this "
                                               "namespace"}, status=403)
        body = await request.json()
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.url}/datasets/{repo_id}"
        if repo_id in self.repos:
            return web.json_response({"error": "You already created this dataset repo", "url": url}, status=409)
        self.repos[repo_id] = Repo(repo_id, body.get("type", "model"), body.get("visibility"))
        return web.json_response({"url": url, "name": repo_id, "id": repo_id})

    async def _validate_yaml(self, request: web.Request) -> web.Response:
        content = (await request.json())["content"]
        _, _, rest = content.partition("---\n")
        header, sep, _ = rest.partition("\n---")
        try:
            assert sep and isinstance(yaml.safe_load(header), dict)
        except (AssertionError, yaml.YAMLError):
            return web.json_response({"errors": [{"message": "invalid YAML header"}], "warnings": []}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    async def _preupload(self, request: web.Request) -> web.Response:
        self._repo(request)
        files = (await request.json())["files"]
        answer = []
        for f in files:
            sample = base64.b64decode(f["sample"])
            binary = b"\0" in sample or f["path"].endswith(".parquet")
            answer.append({"path": f["path"], "uploadMode": "lfs" if binary else "regular", "shouldIgnore": False,
                           "oid": None})
        return web.json_response({"files": answer, "commitOid": "0" * 40})

    async def _lfs_batch(self, request: web.Request) -> web.Response:
        self._repo(request)
        body = await request.json()
        assert body["operation"] == "upload" and "basic" in body["transfers"], body
        objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                    "actions": {"upload": {"href": f"{self.url}/lfs/{o['oid']}"},
                                "verify": {"href": f"{self.url}/lfs-verify"}}} for o in body["objects"]]
        return web.json_response({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    async def _lfs_put(self, request: web.Request) -> web.Response:
        data = await request.read()
        oid = request.match_info["oid"]
        if hashlib.sha256(data).hexdigest() != oid:
            return web.json_response({"error": "sha256 does not match the oid"}, status=400)
        self.lfs[oid] = data
        return web.Response(status=200)

    async def _lfs_verify(self, request: web.Request) -> web.Response:
        body = await request.json()
        if len(self.lfs.get(body["oid"], b"")) != body["size"]:
            return web.json_response({"error": "object not uploaded"}, status=404)
        return web.json_response({})

    async def _commit(self, request: web.Request) -> web.Response:
        repo = self._repo(request)
        lines = [orjson.loads(line) for line in (await request.read()).splitlines() if line.strip()]
        assert lines[0]["key"] == "header", lines[0]
        staged: dict[str, bytes] = {}
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                assert value["encoding"] == "base64"
                staged[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in self.lfs:
                    return web.json_response({"error": f"LFS object {value['oid']} was not uploaded"}, status=400)
                staged[value["path"]] = self.lfs[value["oid"]]
            else:
                return web.json_response({"error": f"unexpected operation {line['key']}"}, status=400)
        repo.files.update(staged)
        oid = hashlib.sha1(orjson.dumps(sorted(staged))).hexdigest()
        repo.commits.append(lines[0]["value"]["summary"])
        return web.json_response({"commitUrl": f"{self.url}/datasets/{repo.repo_id}/commit/{oid}",
                                  "commitOid": oid, "success": True})


@contextmanager
def serve(standin: HubStandIn) -> Iterator[HubStandIn]:
    """The stand-in on a free loopback port, in a thread, for as long as the block runs."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(standin.app())
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    standin.url = f"http://127.0.0.1:{port}"
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()
