"""The ``rendezvous.backends`` seam: backends are found through entry points (a third party's
the same way as ours), the default costs single-node users nothing, a missing extra or a bad
URL is a one-line configuration error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from rendezvous.backends import BackendSettings, MsgpackCodec, available, create_backend
from rendezvous.backends.base import Backend, PairingStore
from rendezvous.backends.memory import MemoryBackend
from rendezvous.errors import ConfigError, PluginError


def test_the_built_in_backends_register_through_entry_points():
    assert {"memory", "redis"} <= set(available())
    backend = create_backend("memory")
    assert isinstance(backend, MemoryBackend) and isinstance(backend, Backend)
    assert backend.ready and not backend.distributed
    assert isinstance(backend.pairing("sf", hold_timeout=1.0, answer_timeout=1.0), PairingStore)


def test_an_unknown_backend_is_a_plugin_error():
    with pytest.raises(PluginError, match="no backend named 'nope'.*memory"):
        create_backend("nope")


def test_a_third_party_backend_is_found_like_a_third_party_profile(tmp_path, monkeypatch):
    (tmp_path / "shared_backend.py").write_text(textwrap.dedent("""
        from rendezvous.backends.memory import MemoryBackend

        class SharedBackend(MemoryBackend):
            name = "shared"

        def create(settings):
            backend = SharedBackend(settings)
            backend.url = settings.url
            return backend
    """))
    info = tmp_path / "shared_backend-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shared-backend\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[rendezvous.backends]\nshared = shared_backend:create\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "shared" in available()
    backend = create_backend("shared", BackendSettings(url="shared://somewhere"))
    assert backend.name == "shared" and backend.url == "shared://somewhere"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_the_memory_backend_imports_no_redis_client():
    result = _python("""
        import sys
        from rendezvous.backends import create_backend
        store = create_backend("memory").pairing("sf", hold_timeout=1.0, answer_timeout=1.0)
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("redis", "hiredis") or m.startswith("rendezvous.backends.redis")))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_redis_backend_without_its_extra_says_what_to_install():
    result = _python("""
        import sys
        sys.modules["redis"] = None  # as if the extra were not installed
        from rendezvous.backends import BackendSettings, create_backend
        from rendezvous.errors import ConfigError
        try:
            create_backend("redis", BackendSettings())
        except ConfigError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install 'rendezvous[redis]'" in result.stdout


def test_the_redis_backend_checks_its_url():
    with pytest.raises(ConfigError, match="backend_url: expected redis://"):
        create_backend("redis", BackendSettings(url="http://127.0.0.1:6379"))


def test_settings_are_checked_at_the_boundary():
    with pytest.raises(ValueError):
        BackendSettings(node_ttl=0)


@pytest.mark.parametrize("value", ["sdp", b"\x00\xff", None, 3, 2.5, True, ("standalone", "restricted"), {"nat": "unknown"}])
def test_the_default_codec_round_trips_what_profiles_pass(value):
    codec = MsgpackCodec()
    assert codec.loads(codec.dumps(value)) == value


def test_the_default_codec_is_whole_again_after_a_value_it_cannot_pack():
    codec = MsgpackCodec()  # (one packer kept for every call: a failed value must leave nothing behind)
    with pytest.raises(TypeError):
        codec.dumps(("sdp", object()))
    assert codec.loads(codec.dumps(("standalone", "restricted"))) == ("standalone", "restricted")
