import pytest

from pushwire.apps.index import AppIndex
from pushwire.config import ConfigError, load

GOOD = """
[server]
host = "127.0.0.1"
port = 6001

[[apps]]
id = "app-id"
key = "app-key"
secret = "app-secret"
enable_client_messages = true
max_connections = 0
max_presence_members = 100
webhooks = [ { url = "http://127.0.0.1:9000/hook", event_types = ["channel_occupied"] } ]

[[apps]]
id = "two"
key = "key-two"
secret = "s2"
"""


def write(tmp_path, text):
    p = tmp_path / "c.toml"
    p.write_text(text)
    return str(p)


def test_documented_shape_loads(tmp_path):
    cfg = load(write(tmp_path, GOOD), env={})
    assert [a.id for a in cfg.apps] == ["app-id", "two"]
    assert cfg.apps[0].webhooks[0].event_types == ("channel_occupied",)
    assert not cfg.demo_credentials
    assert AppIndex(cfg.apps).by_key("key-two").id == "two"


def test_defaults_use_demo_app():
    cfg = load(None, env={})
    assert cfg.demo_credentials
    assert (cfg.apps[0].id, cfg.apps[0].key, cfg.apps[0].secret) == (
        "app-id",
        "app-key",
        "app-secret",
    )
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 6001)


def test_env_and_flags_override(tmp_path):
    env = {
        "PUSHWIRE_PORT": "7000",
        "PUSHWIRE_HOST": "0.0.0.0",
        "PUSHWIRE_APP_ID": "e",
        "PUSHWIRE_APP_KEY": "ek",
        "PUSHWIRE_APP_SECRET": "es",
    }
    cfg = load(write(tmp_path, GOOD), env=env, overrides={"port": 7100})
    assert cfg.server.port == 7100 and cfg.server.host == "0.0.0.0"
    assert cfg.apps[0].key == "ek" and len(cfg.apps) == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[server]\nprot = 1\n", "[server]: unknown key 'prot'"),
        ("[server]\nport = 'x'\n", "key 'port' must be of type int"),
        (
            "[[apps]]\nid='a'\nkey='k'\nsecret='s'\n[[apps]]\nid='b'\nkey='k'\nsecret='s'\n",
            "apps[1]: duplicate app key 'k'",
        ),
        ("[[apps]]\nid='a'\nkey='k'\n", "missing required key 'secret'"),
        ("[[apps]]\nid='a'\nkey='k'\nsecret='s'\nmax_presence_members=0\n", "greater than 0"),
        ("[[apps]]\nid='a'\nkey='k'\nsecret='s'\nwebhooks=[{url='ftp://x'}]\n", "'url'"),
        (
            "[[apps]]\nid='a'\nkey='k'\nsecret='s'\nwebhooks=[{url='http://x',event_types=['x']}]\n",
            "unknown event type 'x'",
        ),
        (
            "[[apps]]\nid='a'\nkey='k'\nsecret='s'\nenabled='yes'\n",
            "'enabled' must be of type bool",
        ),
        ("nonsense = [", "invalid TOML"),
        ("[other]\n", "unknown top-level key 'other'"),
    ],
)
def test_config_errors_name_file_key_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load(path, env={})
    assert message in str(info.value)
    assert str(info.value).startswith(path)
    assert "\n" not in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load("/nonexistent/x.toml", env={})


def test_rest_fast_path_setting(tmp_path):
    assert load(None, env={}).server.rest_fast_path is True
    assert load(None, env={"PUSHWIRE_REST_FAST_PATH": "0"}).server.rest_fast_path is False
    assert load(None, env={"PUSHWIRE_REST_FAST_PATH": "1"}).server.rest_fast_path is True
    path = write(tmp_path, "[server]\nrest_fast_path = false\n")
    assert load(path, env={}).server.rest_fast_path is False
    with pytest.raises(ConfigError, match="rest_fast_path"):
        load(write(tmp_path, '[server]\nrest_fast_path = "no"\n'), env={})


@pytest.mark.parametrize(
    ("env", "overrides", "message"),
    [
        ({}, {"port": 70000}, "'port' must be between 0 and 65535"),
        ({"PUSHWIRE_PORT": "70000"}, {}, "'port' must be between 0 and 65535"),
        ({"PUSHWIRE_PORT": "-1"}, {}, "'port' must be between 0 and 65535"),
        ({}, {"workers": 0}, "'workers' must be at least 1"),
    ],
)
def test_env_and_flags_are_validated_like_the_file(env, overrides, message):
    """One validation for every source: an override is checked as the same key in the file."""
    with pytest.raises(ConfigError, match=message):
        load(None, env=env, overrides=overrides)


def test_every_server_check_applies_to_every_source(tmp_path):
    """A file value that only the file check catches would pass as an override: the same
    `activity_timeout = 0` is refused from the file and from a flag."""
    with pytest.raises(ConfigError, match="'activity_timeout' must be greater than 0"):
        load(write(tmp_path, "[server]\nactivity_timeout = 0\n"), env={})
    with pytest.raises(ConfigError, match="'activity_timeout' must be greater than 0"):
        load(None, env={}, overrides={"activity_timeout": 0})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PUSHWIRE_BUS_URL": "redis://127.0.0.1:1/0"}, "bus_url and state_url go together"),
        ({"PUSHWIRE_REDIS_URL": "http://x"}, "key 'redis_url'"),
        ({"PUSHWIRE_REDIS_URL": "redis+sentinel://127.0.0.1:26379"}, "key 'redis_url'"),
        (
            {"PUSHWIRE_BUS_URL": "redis+cluster://n1:7000", "PUSHWIRE_STATE_URL": "redis://s"},
            "bus and state are one cluster",
        ),
    ],
)
def test_backplane_urls_are_checked(env, message):
    with pytest.raises(ConfigError, match=message):
        load(None, env=env)


def test_a_redis_cluster_is_both_roles(tmp_path):
    url = "redis+cluster://n1:7000,n2:7001"
    both = load(None, env={"PUSHWIRE_REDIS_URL": url}).cluster
    assert (both.bus_url, both.state_url) == (url, url)
    braces = f'[cluster]\nredis_url = "{url}"\nkey_prefix = "p{{x}}"\n'
    with pytest.raises(ConfigError, match=r"no '\{' or '\}' with Redis Cluster"):
        load(write(tmp_path, braces), env={})


def test_redis_url_is_both_roles_unless_one_is_set_apart():
    both = load(None, env={"PUSHWIRE_REDIS_URL": "redis://r:6379/0"}).cluster
    assert (both.bus_url, both.state_url) == ("redis://r:6379/0", "redis://r:6379/0")
    apart = load(
        None, env={"PUSHWIRE_REDIS_URL": "redis://r:6379/0"}, overrides={"state_url": "redis://s/1"}
    ).cluster
    assert (apart.bus_url, apart.state_url) == ("redis://r:6379/0", "redis://s/1")
    sentinel = "redis+sentinel://h1:26379,h2/pw/2"
    assert load(None, env={"PUSHWIRE_BUS_URL": sentinel, "PUSHWIRE_STATE_URL": sentinel})
