"""Remote (NDIF) probing and steering without a network: a fake NDIF server behind nnsight's own transport.

The client is what a real user has: ``TransformersModel(<dir with config + tokenizer>)`` on the meta
device (no weights). nnsight's ``RemoteBackend`` runs unchanged; only ``httpx.Client.post`` and
``websocket.create_connection`` are replaced. The fake server deserializes the request the way NDIF
does (``RequestModel.deserialize`` against its own model's persistent objects, with our packages
hidden from ``sys.modules`` so only code shipped by value can run), executes it on a real-weight copy
of the model and streams back a COMPLETED response. The tests read the captured request (envelope,
headers, block payload) and compare the returned numbers with local runs.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.abc
import io
import json
import linecache
import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from probes import record
from probes.models import tiny_model
from probes.positions import encode_texts
from probes.remote import (
    API_KEY_ENV,
    MissingAPIKeyError,
    RemoteConfigError,
    RemoteModel,
    capture,
    make_backend,
    nnsight_target,
    resolve_host,
)
from steering.operators import portable_operator

KEY = "test-key-7f3a"
REPO = "welfare-axis-tests/tiny-llama"


OUR_PACKAGES = frozenset({"probes", "steering", "maze_env", "welfare_axis"})


class _BlockPackages(importlib.abc.MetaPathFinder):
    """Makes ``import probes`` (and the rest of the toolkit) fail, as on an NDIF server."""

    def __init__(self, roots: frozenset[str]) -> None:
        self.roots = roots

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in self.roots:
            raise ModuleNotFoundError(
                f"No module named {name!r} (not installed on the NDIF server)", name=name
            )
        return None


class FakeNDIF:
    """Stands in for api.ndif.us: records every request and runs it on ``server_lm``."""

    def __init__(self, server_lm: Any) -> None:
        self.server_lm = server_lm
        self.posts: list[dict[str, Any]] = []
        self.sockets: list[dict[str, Any]] = []
        self._outbox: list[bytes] = []

    # -- transport doubles -------------------------------------------------------------------------

    def post(self, client: Any, url: str, *, data: dict, files: dict, headers: dict, **_: Any) -> Any:
        import httpx

        envelope = json.loads(data["data"])
        blob = files["blob"][1]
        self.posts.append({"url": url, "envelope": envelope, "blob": blob, "headers": dict(headers)})
        result = self.run(envelope, blob)
        self._outbox.append(self.completed(result, compress=envelope["compress"]))
        body = {"id": f"job-{len(self.posts)}", "status": "RECEIVED"}
        return httpx.Response(200, json=body, request=httpx.Request("POST", url))

    def create_connection(self, url: str, header: dict | None = None, **_: Any) -> Any:
        fake = self
        self.sockets.append({"url": url, "header": dict(header or {})})

        class Socket:
            greeted = False

            def recv(self) -> str | bytes:
                if not self.greeted:
                    self.greeted = True
                    return json.dumps({"session_id": "session-1"})
                return fake._outbox.pop(0)

            def settimeout(self, _: float) -> None:
                pass

            def close(self) -> None:
                pass

        return Socket()

    # -- the server ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def server_environment(self) -> Iterator[None]:
        """What NDIF has: none of our packages importable (only code shipped by value runs)."""
        from nnsight.intervention.backends.local import LocalSimulationBackend

        # deserialize() registers the block's source in linecache under the client's file name; a real
        # server is another process, so keep this process's entries (inspect.getsource reads them).
        saved_lines = dict(linecache.cache)
        hider = LocalSimulationBackend(self.server_lm)
        hidden = hider._hide_local_modules()
        # An editable install re-imports our packages through its own meta-path finder: refuse them first.
        blocker = _BlockPackages(OUR_PACKAGES)
        sys.meta_path.insert(0, blocker)
        try:
            yield
        finally:
            sys.meta_path.remove(blocker)
            hider._restore(hidden)
            linecache.cache.clear()
            linecache.cache.update(saved_lines)

    def load(self, blob: bytes, compress: bool) -> Any:
        """Deserialize a request as the server does."""
        from nnsight.schema.request import RequestModel

        with self.server_environment():
            return RequestModel.deserialize(
                blob, self.server_lm._remoteable_persistent_objects(), compress=compress
            )

    def run(self, envelope: dict, blob: bytes) -> dict[str, Any]:
        out: dict[str, Any] = {}
        errors: list[BaseException] = []

        def serve() -> None:  # a fresh thread: nnsight's trace depth and saved set are thread-local
            from nnsight.schema.request import RequestModel
            from nnsight.tracing.tracer import _saves, dec, inc

            try:
                self.server_lm._remoteable_set_env(envelope["env"])
                with self.server_environment():  # deserialize *and* execute without our packages
                    tracer = RequestModel.deserialize(
                        blob, self.server_lm._remoteable_persistent_objects(), compress=envelope["compress"]
                    )
                    inc()
                    try:
                        tracer.execute(tracer.info.code)
                        saved = _saves()
                        out.update({k: v for k, v in tracer.info.frame.f_locals.items() if id(v) in saved})
                    finally:
                        dec()
            except BaseException as error:  # re-raised in the test's thread
                errors.append(error)

        worker = threading.Thread(target=serve)
        worker.start()
        worker.join()
        if errors:
            raise errors[0]
        return out

    @staticmethod
    def completed(result: dict[str, Any], *, compress: bool) -> bytes:
        from nnsight.schema.response import ResponseModel, Status

        buffer = io.BytesIO()
        torch.save(result, buffer)
        data = buffer.getvalue()
        if compress:
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        return ResponseModel(id="job", status=Status.COMPLETED, data=data).pickle()


@pytest.fixture
def remote_setup(tmp_path, monkeypatch):
    """``(model, tok, client_lm, server)``: real tiny model, meta client for it, fake NDIF installed."""
    import httpx
    import huggingface_hub
    import websocket
    from nnsight import CONFIG
    from nnsight.modeling.transformers import TransformersModel

    model, tok = tiny_model("llama", seed=0)
    model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    client_lm = TransformersModel(str(tmp_path), task="text-generation", tokenizer=copy.deepcopy(tok))
    assert next(client_lm._module.parameters()).device.type == "meta"
    # The model key canonicalizes the repo id through the Hub: answer offline.
    monkeypatch.setattr(
        huggingface_hub.HfApi, "model_info", lambda self, repo_id, **kw: types.SimpleNamespace(id=REPO)
    )
    server = FakeNDIF(TransformersModel(copy.deepcopy(model), tokenizer=copy.deepcopy(tok)))
    monkeypatch.setattr(httpx.Client, "post", lambda client, url, **kw: server.post(client, url, **kw))
    monkeypatch.setattr(websocket, "create_connection", server.create_connection)
    monkeypatch.setattr(CONFIG.APP, "REMOTE_LOGGING", False)
    monkeypatch.setenv(API_KEY_ENV, KEY)
    return model, tok, client_lm, server


def _payload(server: FakeNDIF, index: int = 0) -> tuple[str, dict[str, Any]]:
    """The block source and the variables it ships, of request ``index``."""
    post = server.posts[index]
    tracer = server.load(post["blob"], post["envelope"]["compress"])
    return tracer.info.code.co_filename, dict(tracer.info.frame.f_locals)


def test_missing_api_key_is_a_clear_error(remote_setup, monkeypatch):
    from nnsight import CONFIG

    _, tok, client_lm, server = remote_setup
    monkeypatch.delenv(API_KEY_ENV)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(MissingAPIKeyError, match=API_KEY_ENV):
        RemoteModel(client_lm)
    with pytest.raises(MissingAPIKeyError, match="remote='local'"):
        make_backend(client_lm, True)
    with pytest.raises(MissingAPIKeyError):
        capture(client_lm, tok, ["hi"], layers=[0], remote=True)
    assert server.posts == [] and server.sockets == []
    # an explicit key works without the environment variable
    assert RemoteModel(client_lm, api_key="explicit").backend().api_key == "explicit"


def test_bad_remote_settings_are_refused(remote_setup):
    model, tok, client_lm, _ = remote_setup
    with pytest.raises(RemoteConfigError, match="http"):
        resolve_host("api.ndif.us")
    with pytest.raises(RemoteConfigError, match="remote must be"):
        make_backend(client_lm, "sometimes")
    with pytest.raises(RemoteConfigError, match="nnsight model"):
        nnsight_target(model, tok, remote=True)
    with pytest.raises(TypeError, match="nnsight model"):
        RemoteModel(model)


def test_remote_capture_sends_model_key_layers_and_key_and_matches_local(remote_setup):
    model, tok, client_lm, server = remote_setup
    rm = RemoteModel(client_lm, host="https://ndif.example.org")
    texts = ["I went north and found gold.", "A wall.", "Mold everywhere, turn back now"]

    acts = capture(rm, tok, texts, layers=[0, 1], position="last", batch_size=2)

    assert len(server.posts) == 2  # one request per batch
    post = server.posts[0]
    assert post["url"] == "https://ndif.example.org/request"
    assert server.sockets[0]["url"] == "wss://ndif.example.org/subscribe"
    assert post["headers"]["ndif-api-key"] == KEY and server.sockets[0]["header"]["ndif-api-key"] == KEY
    key = post["envelope"]["model_key"]
    assert key.startswith("nnsight.modeling.transformers.TransformersModel:")
    assert json.loads(key.split(":", 1)[1]) == {"repo_id": REPO, "revision": None, "task": "text-generation"}
    assert post["envelope"]["session_id"] == "session-1"
    import zstandard

    assert KEY.encode() not in zstandard.ZstdDecompressor().decompress(post["blob"])
    _, shipped = _payload(server)
    assert sorted(shipped["envoys"]) == [0, 1]
    assert [shipped["envoys"][layer].path for layer in (0, 1)] == [
        "model.model.layers.0",
        "model.model.layers.1",
    ]
    lengths = encode_texts(tok, texts[:2], padding_side="right")["attention_mask"].sum(1)
    assert shipped["index"].tolist() == (lengths - 1).tolist()  # the last real token of each row

    local = record.capture(model, tok, texts, layers=[0, 1], position="last", batch_size=2)
    for layer in (0, 1):
        torch.testing.assert_close(acts[layer], local[layer], rtol=0, atol=1e-6)


def test_remote_capture_multi_token_rule_matches_local(remote_setup):
    model, tok, client_lm, server = remote_setup
    texts = ["north east south", "west"]
    acts = capture(client_lm, tok, texts, layers=[1], position="all", remote=True)
    _, shipped = _payload(server)
    assert shipped["selection"].sum().item() == sum(len(tok(t)["input_ids"]) for t in texts)
    local = record.capture(model, tok, texts, layers=[1], position="all")
    torch.testing.assert_close(acts[1], local[1], rtol=0, atol=1e-6)


def test_remote_steering_ships_the_additions_and_matches_local_apply(remote_setup):
    from steering.apply import apply
    from steering.nnsight_apply import forward_nnsight

    model, tok, client_lm, server = remote_setup
    rm = RemoteModel(client_lm)
    batch = tok(["Are you happy?", "Go west"], return_tensors="pt", padding=True, padding_side="left")
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))

    logits = forward_nnsight(
        rm,
        {1: direction},
        batch["input_ids"],
        batch["attention_mask"],
        layers=[1],
        alpha=3.0,
        positions="all",
        operator=portable_operator(),
    )

    _, shipped = _payload(server)
    # the block ships the direction for layer 1 and alpha 3.0 (prepared, or raw for server-side preparation)
    shipped_directions = shipped.get("by_layer", shipped.get("directions"))
    assert set(shipped_directions) == {1} and torch.equal(shipped_directions[1], direction)
    assert shipped.get("alphas", {1: shipped.get("alpha")}) == {1: 3.0}
    if "envoys" in shipped:
        assert shipped["envoys"][1].path == "model.model.layers.1"
    else:
        assert shipped["layers"] == [1]
    with torch.no_grad(), apply(model, {1: direction}, layers=[1], alpha=3.0, positions="all"):
        expected = model(**batch).logits
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(logits[mask], expected[mask], rtol=0, atol=1e-5)
    with torch.no_grad():
        plain = model(**batch).logits
    assert (logits[mask] - plain[mask]).abs().max() > 1e-3  # the addition really happened remotely


def test_remote_steered_generation_matches_local(remote_setup):
    from steering.apply import apply
    from steering.nnsight_apply import generate_nnsight

    model, tok, client_lm, server = remote_setup
    rm = RemoteModel(client_lm)
    batch = tok(["The maze"], return_tensors="pt")
    direction = torch.randn(64, generator=torch.Generator().manual_seed(5))
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)

    tokens = generate_nnsight(
        rm,
        {0: direction},
        batch["input_ids"],
        batch["attention_mask"],
        layers=[0],
        alpha=8.0,
        positions="all",
        operator=portable_operator(),
        **settings,
    )

    assert len(server.posts) == 1
    with torch.no_grad(), apply(model, {0: direction}, layers=[0], alpha=8.0, positions="all"):
        expected = model.generate(**batch, **settings)
    assert tokens.tolist() == expected.tolist()


def test_local_simulation_dry_run_matches_local(remote_setup):
    from nnsight.modeling.transformers import TransformersModel

    model, tok, _, server = remote_setup
    lm = TransformersModel(model, tokenizer=copy.deepcopy(tok))
    acts = capture(lm, tok, ["north", "south west"], layers=[0, 1], remote="local")
    local = record.capture(model, tok, ["north", "south west"], layers=[0, 1])
    for layer in (0, 1):
        torch.testing.assert_close(acts[layer], local[layer], rtol=0, atol=1e-6)
    assert server.posts == []  # nothing left the process


def test_record_capture_and_extract_take_remote_models(remote_setup):
    """probes.record.capture / probes.extract with a RemoteModel."""
    from probes.extract import train_concept_vectors

    model, tok, client_lm, server = remote_setup
    rm = RemoteModel(client_lm)
    texts = ["I went north.", "Gold!", "A wall", "Mold, ouch"]
    acts = record.capture(rm, tok, texts, layers=[0, 1], batch_size=3)
    local = record.capture(model, tok, texts, layers=[0, 1], batch_size=3)
    for layer in (0, 1):
        torch.testing.assert_close(acts[layer], local[layer], rtol=0, atol=1e-6)
    acts = record.capture(client_lm, tok, texts, layers=[1], position="all", remote=True)
    local = record.capture(model, tok, texts, layers=[1], position="all")
    torch.testing.assert_close(acts[1], local[1], rtol=0, atol=1e-6)
    chats = {
        "Gold": [[{"role": "user", "content": "go"}, {"role": "assistant", "content": "N"}]] * 2,
        "Mold": [[{"role": "user", "content": "go"}, {"role": "assistant", "content": "S"}]] * 2,
    }
    remote_vecs = train_concept_vectors(rm, tok, chats, layers=[0, 1])
    local_vecs = train_concept_vectors(model, tok, chats, layers=[0, 1])
    for name in chats:
        for layer in (0, 1):
            torch.testing.assert_close(
                remote_vecs[name].directions[layer], local_vecs[name].directions[layer], rtol=0, atol=1e-6
            )
    assert remote_vecs["Gold"].model_family == local_vecs["Gold"].model_family
    with pytest.raises(RemoteConfigError, match="nnsight model"):
        record.capture(model, tok, texts, layers=[0], remote=True)


def test_steering_remote_flag_with_the_default_operator(remote_setup):
    """steering.nnsight_apply with remote=True and no operator."""
    from steering.apply import apply
    from steering.nnsight_apply import forward_nnsight

    model, tok, client_lm, server = remote_setup
    batch = tok(["Are you happy?"], return_tensors="pt")
    direction = torch.randn(64, generator=torch.Generator().manual_seed(3))
    logits = forward_nnsight(
        client_lm, {1: direction}, batch["input_ids"], batch["attention_mask"], layers=[1], alpha=3.0,
        positions="all", remote=True,
    )  # fmt: skip
    with torch.no_grad(), apply(model, {1: direction}, layers=[1], alpha=3.0, positions="all"):
        expected = model(**batch).logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert len(server.posts) == 1
