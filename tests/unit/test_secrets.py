"""Secrets never leave the process: not in the written config.yaml, not in config error messages, not in the
embedded Redis's command line; the token comes only from security.token_file or SEARCHRL_TOKEN, and a bad one is
refused with the field named but not the value."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from searchrl.config import ConfigError, dump_config, load_config, read_token, redact
from searchrl.redisio import EmbeddedRedis, connect

PASSWORD = "s3cret-redis-pw"
TOKEN = "tok-0123456789abcdef0123456789"
NO_RETRY = Retry(NoBackoff(), 0)  # redis-py retries an AuthenticationError (a ConnectionError) by default


def test_redact_hides_url_passwords_and_token_assignments() -> None:
    assert redact(f"redis://:{PASSWORD}@h:6379/0") == "redis://:***@h:6379/0"
    assert redact(f"rediss://user:{PASSWORD}@h/2 and more") == "rediss://user:***@h/2 and more"
    assert redact(f"--set security.token={TOKEN} x=1") == "--set security.token=*** x=1"
    assert redact(f"redis_password: {PASSWORD}") == "redis_password: ***"
    # no secret, nothing changed: ports, hosts without userinfo, a token *file* path
    for plain in (
        "redis://h:6379/0",
        "127.0.0.1:50051",
        "security.token_file=/run/secrets/token",
        "segment_tokens: 48",
        "max_response_tokens=2048",
    ):
        assert redact(plain) == plain


def test_a_dumped_config_without_secrets_loads_back_unchanged(tmp_path) -> None:
    cfg = load_config("configs/tiny.yaml")
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path).model_dump() == cfg.model_dump()


def test_dump_config_has_no_redis_password_and_no_token(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SEARCHRL_REDIS_URL", f"redis://:{PASSWORD}@redis:6379/0")
    monkeypatch.setenv("SEARCHRL_TOKEN", TOKEN)
    cfg = load_config(None)
    assert cfg.addresses.redis_url.endswith("@redis:6379/0")
    text = dump_config(cfg)
    assert PASSWORD not in text and TOKEN not in text
    assert "redis://:***@redis:6379/0" in text


def test_config_errors_never_echo_a_secret(monkeypatch) -> None:
    monkeypatch.setenv("SEARCHRL_TOKEN", TOKEN)
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"addresses.redis_url=redis://:{PASSWORD}@h:6379/0", "trainer.lr=-1"])
    assert "trainer.lr" in str(e.value) and PASSWORD not in str(e.value)
    with pytest.raises(ConfigError) as e:  # an unknown key: the value is echoed in the --set list
        load_config(None, [f"security.token={TOKEN}"])
    assert "security.token" in str(e.value) and TOKEN not in str(e.value)
    with pytest.raises(ConfigError) as e:  # a broken assignment is echoed whole
        load_config(None, [f"redis://:{PASSWORD}@h"])
    assert PASSWORD not in str(e.value)


def test_token_from_env_or_file(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SEARCHRL_TOKEN", raising=False)
    cfg = load_config(None)
    assert read_token(cfg.security) == ""  # none configured
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    cfg = load_config(None, [f"security.token_file={f}"])
    assert read_token(cfg.security) == TOKEN
    monkeypatch.setenv("SEARCHRL_TOKEN", "env-" + TOKEN)
    assert read_token(cfg.security) == "env-" + TOKEN, "SEARCHRL_TOKEN (deployment wiring) wins"


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot read"), ("", "empty"), ("short-tok", "at least 16"), ("two words 0123456789", "space")],
)
def test_bad_token_names_the_field_not_the_value(monkeypatch, tmp_path, content, why) -> None:
    monkeypatch.delenv("SEARCHRL_TOKEN", raising=False)
    f = tmp_path / "token"
    if content is not None:
        f.write_text(content)
    cfg = load_config(None, [f"security.token_file={f}"])
    with pytest.raises(ConfigError) as e:
        read_token(cfg.security)
    msg = str(e.value)
    assert "security.token_file" in msg and why in msg
    assert not content or content not in msg
    monkeypatch.setenv("SEARCHRL_TOKEN", "short-tok")
    with pytest.raises(ConfigError, match="SEARCHRL_TOKEN") as e:
        read_token(cfg.security)
    assert "short-tok" not in str(e.value)


def test_tls_settings_are_checked_together() -> None:
    with pytest.raises(ConfigError, match="security.tls_key"):
        load_config(None, ["security.tls_cert=/c.pem"])
    with pytest.raises(ConfigError, match="security.tls_cert"):
        load_config(None, ["security.tls_client_auth=true"])
    with pytest.raises(ConfigError, match="security.tls_ca"):
        load_config(
            None, ["security.tls_cert=/c.pem", "security.tls_key=/k.pem", "security.tls_client_auth=true"]
        )


def test_embedded_redis_requires_its_password() -> None:
    server = EmbeddedRedis.start()
    try:
        url = server.url
        assert url.startswith("redis://:") and "@127.0.0.1:" in url
        password = url.split("://:", 1)[1].split("@", 1)[0]
        assert len(password) >= 32
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, retry=NO_RETRY).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong", retry=NO_RETRY).ping()
        assert connect(url).ping()
        # not visible to other local users through the process list
        cmdline = open(f"/proc/{server.proc.pid}/cmdline", "rb").read().decode()
        assert password not in cmdline
    finally:
        server.stop()


def test_cli_error_output_has_no_secret(capsys) -> None:
    from searchrl.cli import main

    args = ["serve", "reward", "--set", f"addresses.redis_url=redis://:{PASSWORD}@h:6379/0"]
    assert main([*args, "--set", "trainer.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert "trainer.lr" in err and PASSWORD not in err
