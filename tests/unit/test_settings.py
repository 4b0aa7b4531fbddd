import pathlib

import pytest

from rendezvous.config import load_config
from rendezvous.core import RootPolicy
from rendezvous.errors import ConfigError


def test_defaults_toml_env_cli_precedence(tmp_path: pathlib.Path):
    f = tmp_path / "c.toml"
    f.write_text('[server]\nport = 7000\n[overlay]\nsecret = "from-toml"\ntimeout = 12.5\n')
    c = load_config(["overlay"], f, environ={})
    assert c.server.port == 7000 and c.profiles["overlay"].secret == "from-toml"
    assert c.profiles["overlay"].timeout == 12.5
    c = load_config(["overlay"], f, environ={"SECRET": "env", "PORT": "7100"})
    assert c.server.port == 7100 and c.profiles["overlay"].secret == "env"
    c = load_config(["overlay"], f, environ={"SECRET": "env", "RENDEZVOUS_OVERLAY_SECRET": "generic"})
    assert c.profiles["overlay"].secret == "generic"
    c = load_config(["overlay"], f, environ={"SECRET": "env"}, profile_overrides={"overlay": {"secret": ("cli", "command line")}})
    assert c.profiles["overlay"].secret == "cli"


def test_enum_and_optional_values():
    c = load_config(["overlay"], environ={"RENDEZVOUS_OVERLAY_ROOT_POLICY": "failover", "RENDEZVOUS_OVERLAY_JOIN_RATE": "2.5"})
    assert c.profiles["overlay"].root_policy is RootPolicy.FAILOVER
    assert c.profiles["overlay"].join_rate == 2.5


@pytest.mark.parametrize(
    "toml,message",
    [
        ("[overlay]\ntimeout = 'x'\n", "overlay.timeout"),
        ("[overlay]\ntimeout = -1\n", "must be positive"),
        ("[overlay]\nroot_policy = 'maybe'\n", "expected one of"),
        ("[overlay]\nnope = 1\n", "unknown setting"),
        ("[overlay]\nsecret = ''\n", "secret"),
        ("[server]\nport = 70000\n", "port"),
        ("[bogus]\n", "unknown table"),
        ("not toml = = =", "invalid TOML"),
        ("[overlay]\npublic = '/no/such/dir'\n", "not a directory"),
    ],
)
def test_invalid_config_is_one_clear_line(tmp_path, toml, message):
    f = tmp_path / "c.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_config(["overlay"], f, environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_shipped_config_is_valid():
    root = pathlib.Path(__file__).resolve().parents[2]
    c = load_config(["overlay"], root / "configs" / "overlay.toml", environ={})
    assert c.profiles["overlay"].timeout == 30.0


def test_unknown_profile():
    with pytest.raises(ConfigError, match="no profile named 'zzz'"):
        load_config(["zzz"], environ={})


@pytest.mark.parametrize(
    "values,message",
    [
        ({"disable_tls": True, "broker_sqs_name": "q"}, "--broker-sqs-name needs --broker-sqs-region"),
        ({"disable_tls": True, "ip_count_interval": "soon"}, "invalid duration 'soon'"),
        ({"addr": "nonsense"}, "expected [host]:port"),
        ({}, "the --acme-hostnames, --cert and --key, or --disable-tls option is required"),
    ],
)
def test_snowflake_unsupported_and_invalid_options(values, message):
    overrides = {"snowflake": {k: (v, "command line") for k, v in values.items()}}
    with pytest.raises(ConfigError) as info:
        load_config(["snowflake"], environ={}, profile_overrides=overrides)
    assert message in str(info.value)


def test_snowflake_addr_sets_the_listener():
    c = load_config(["snowflake"], environ={}, profile_overrides={"snowflake": {"addr": (":8443", "cli"), "disable_tls": (True, "cli")}})
    assert (c.server.host, c.server.port, c.server.metrics_path) == ("::", 8443, "/prometheus")


def test_wasimoff_unsupported_options():
    with pytest.raises(ConfigError, match="Cloud Run offload is not supported yet"):
        load_config(["wasimoff"], environ={"WASIMOFF_CLOUD_FUNCTION": "f"})
    with pytest.raises(ConfigError, match="boltdb:// is not supported yet"):
        import anyio
        from rendezvous.testing import serve

        async def start():
            async with serve("wasimoff", {"filestorage": "boltdb://x.db", "static_files": None}):
                pass

        anyio.run(start)
