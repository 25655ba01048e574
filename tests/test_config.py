"""Settings from a mapping, a TOML/YAML file and the environment; errors name the key."""

from __future__ import annotations

import logging

import pytest

from tenant_notify import Notifier
from tenant_notify.config import load_settings
from tenant_notify.errors import ConfigurationError, MissingDependencyError, UnknownBackendError
from tenant_notify.models import Channel
from tenant_notify.testing import capture_logs

TOML = """
transport = "eager"
[email]
provider = "memory"
[sms]
provider = "memory"
[tenants.acme]
name = "Acme Shop"
email_from = "Acme Shop <orders@acme.test>"
sms_from = "+15005550006"
[tenants.globex]
name = "Globex Café"
email_from = "hello@globex.test"
locale = "de"
[tenants.globex.email]
provider = "file"
directory = "{spool}"
"""


def test_toml_file_and_per_tenant_provider_override(tmp_path):
    path = tmp_path / "notify.toml"
    path.write_text(TOML.format(spool=tmp_path / "spool"), encoding="utf-8")
    with Notifier.from_settings(path) as notify:
        assert notify.transport.name == "eager"
        notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="globex")
        notify.send_welcome_email(user_email="u@example.com", user_name="U", tenant_id="acme")
        assert len(list((tmp_path / "spool").glob("*.eml"))) == 1
        from tenant_notify.testing import get_outbox

        assert [e.tenant_id for e in get_outbox().emails] == ["acme"]


def test_environment_with_config_file_underneath(tmp_path, monkeypatch):
    path = tmp_path / "notify.toml"
    path.write_text(TOML.format(spool=tmp_path / "spool"), encoding="utf-8")
    monkeypatch.setenv("TENANT_NOTIFY_CONFIG_FILE", str(path))
    monkeypatch.setenv("TENANT_NOTIFY_TRANSPORT__BACKEND", "inprocess")
    monkeypatch.setenv("TENANT_NOTIFY_TRANSPORT__WORKERS", "2")
    monkeypatch.setenv("TENANT_NOTIFY_TENANTS__INITECH__NAME", "Initech")
    monkeypatch.setenv("TENANT_NOTIFY_TENANTS__INITECH__EMAIL_FROM", "hi@initech.test")
    settings = load_settings(None)
    assert settings.transport.backend == "inprocess" and settings.transport.workers == 2
    assert settings.email["provider"] == "memory"  # from the file
    assert settings.tenants["initech"].name == "Initech"
    assert settings.tenants["initech"].id == "initech"


def test_environment_alone(monkeypatch):
    monkeypatch.setenv("TENANT_NOTIFY_TRANSPORT", "eager")
    monkeypatch.setenv("TENANT_NOTIFY_EMAIL__PROVIDER", "smtp")
    monkeypatch.setenv("TENANT_NOTIFY_EMAIL__PORT", "2525")
    monkeypatch.setenv("TENANT_NOTIFY_EMAIL__PASSWORD", "hunter2")
    with Notifier.from_env() as notify:
        assert notify.settings.email["port"] == "2525"
        assert "hunter2" not in repr(notify.settings)
        assert notify.dispatcher.providers.check() is None


@pytest.mark.parametrize(
    ("shorthand", "nested"),
    [
        ("TENANT_NOTIFY_TRANSPORT=eager", "TENANT_NOTIFY_TRANSPORT__WORKERS=8"),
        ("TENANT_NOTIFY_EMAIL=smtp", "tenant_notify_email__port=2525"),
        ("TENANT_NOTIFY_SMS=console", "TENANT_NOTIFY_SMS__PROVIDER=memory"),
    ],
)
def test_a_shorthand_variable_next_to_nested_ones_is_refused(monkeypatch, shorthand, nested):
    for assignment in (shorthand, nested):
        name, value = assignment.split("=")
        monkeypatch.setenv(name, value)
    table = shorthand.split("=")[0].removeprefix("TENANT_NOTIFY_")
    with pytest.raises(ConfigurationError, match=f"{nested.split('=')[0].upper()}") as info:
        load_settings(None)
    assert info.value.key == table.lower()


def test_a_mapping_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("TENANT_NOTIFY_TRANSPORT", "bogus")
    assert load_settings({}).transport.backend == "inprocess"


def test_yaml_file(tmp_path):
    path = tmp_path / "notify.yaml"
    path.write_text("transport: eager\ntenants:\n  acme:\n    name: Acme\n", encoding="utf-8")
    assert load_settings(path).tenants["acme"].name == "Acme"


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"transport": {"backend": "eager", "wrokers": 2}}, "transport.wrokers"),
        ({"email": {"provider": "smtp", "port": "many"}}, "email.port"),
        ({"email": {"provider": "smtp", "hots": "x"}}, "email.hots"),
        ({"email": {"provider": "file"}}, "email.directory"),
        ({"email": {"port": 25}}, "email"),
        ({"tenants": {"a": {"name": "A", "email_from": "not an address"}}}, "tenants.a.email_from"),
        ({"tenants": {"a": {"name": "A", "sms_from": "12345"}}}, "tenants.a.sms_from"),
        ({"tenants": {"a": {"name": "A", "locale": "english!"}}}, "tenants.a.locale"),
        ({"tenants": {"a": {"name": "A\nB"}}}, "tenants.a.name"),
        (
            {"tenants": {"a": {"name": "A", "email": {"provider": "smtp", "port": 0}}}},
            "tenants.a.email.port",
        ),
        ({"tenants": {"a": {"name": "A", "colour": "red"}}}, "tenants.a.colour"),
        ({"retry": {"max_attempts": 0}}, "retry.max_attempts"),
        ({"default_locale": "english!"}, "default_locale"),
    ],
)
def test_bad_configuration_fails_at_build_naming_the_key(settings, key):
    with pytest.raises(ConfigurationError) as info:
        Notifier.from_settings({"transport": "eager", **settings})
    assert info.value.key == key
    assert key in str(info.value)


def test_unknown_provider_suggests_the_close_name():
    with pytest.raises(UnknownBackendError, match="did you mean 'smtp'"):
        Notifier.from_settings({"email": {"provider": "smpt"}})


def test_provider_for_the_wrong_channel():
    with pytest.raises(ConfigurationError, match="does not send sms") as info:
        Notifier.from_settings({"sms": {"provider": "smtp"}})
    assert info.value.key == "sms.provider"


def test_missing_extra_error_names_it():
    err = MissingDependencyError("celery", "celery")
    assert "pip install 'tenant-notify[celery]'" in str(err)
    assert isinstance(err, ImportError)


def test_secrets_never_in_repr_errors_or_logs(tmp_path):
    secret = "s3cr3t-pa55"
    settings = {
        "transport": "eager",
        "email": {
            "provider": "smtp",
            "host": "127.0.0.1",
            "port": 1,
            "password": secret,
            "username": "u",
            "timeout": 0.5,
        },
        "tenants": {
            "acme": {
                "name": "Acme",
                "email_from": "a@acme.test",
                "email": {"password": secret + "-tenant"},
            }
        },
        "retry": {"max_attempts": 1},
    }
    with capture_logs() as logs, Notifier.from_settings(settings) as notify:
        status = notify.send_welcome_email(
            user_email="u@example.com", user_name="U", tenant_id="acme"
        ).wait(5)
        texts = [
            repr(notify.settings),
            repr(notify.tenants.get("acme")),
            str(status),
            repr(notify.dispatcher.providers.get(notify.tenants.get("acme"), status.channel)),
            repr(logs),
        ]
    assert status.state.value == "failed"
    for text in texts:
        assert secret not in text
    assert any(entry["event"] == "delivery_failed" for entry in logs)
    assert not any("u@example.com" in repr(entry) for entry in logs)


def test_logs_mask_recipients_and_bind_ids(tenants):
    from tenant_notify.testing import make_notifier

    with capture_logs() as logs, make_notifier(tenants=tenants) as notify:
        receipt = notify.send_sms(to_phone="+15551234567", body="x", tenant_id="acme")
    [sent] = [entry for entry in logs if entry["event"] == "notification_sent"]
    assert sent["to"] == "+1********67"
    assert sent["tenant_id"] == "acme" and sent["notification_id"] == receipt.id
    assert sent["log_level"] == logging.getLevelName(logging.INFO).lower()


def test_every_bad_key_of_a_table_is_listed_with_its_own_key():
    with pytest.raises(ConfigurationError) as info:
        load_settings({"transport": {"workers": 0}, "retry": {"max_attempts": "x"}, "typo": 1})
    err = info.value
    assert [problem.key for problem in err.problems] == [
        "transport.workers",
        "retry.max_attempts",
        "typo",
    ]
    assert err.key == "transport.workers"
    assert str(err).endswith("(and 2 more problem(s))")


def test_a_provider_that_refuses_its_settings_names_the_whole_key(tmp_path):
    settings = {
        "transport": "eager",
        "email": {"provider": "smtp", "starttls": True, "ca_file": str(tmp_path / "none.pem")},
        "tenants": {"acme": {"name": "Acme", "email_from": "a@acme.test"}},
    }
    with Notifier.from_settings(settings) as notify:
        tenant = notify.tenants.get("acme")
        with pytest.raises(ConfigurationError) as info:
            notify.dispatcher.providers.get(tenant, Channel.EMAIL)
    assert info.value.key == "email.ca_file"


@pytest.mark.parametrize("name", ["Acme\u2028Inc", "Acme\x85", "Acme\x0bInc"])
def test_tenant_names_with_any_line_break_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError, match="line breaks or control characters"):
        load_settings({"tenants": {"a": {"name": name, "email_from": "x@acme.test"}}})
    with pytest.raises(ConfigurationError, match="line breaks or control characters"):
        load_settings({"tenants": {"a": {"name": "A", "email_from": f"{name} <x@acme.test>"}}})


def test_a_secret_of_any_type_is_a_secret_str() -> None:
    from pydantic import SecretStr

    settings = load_settings(
        {
            "email": {"provider": "smtp", "host": "h", "username": "u", "password": 12345678},
            "sms": {"provider": "twilio", "account_sid": "AC" + "0" * 32, "auth_token": 4.5},
        }
    )
    assert settings.email["password"] == SecretStr("12345678")
    assert settings.sms["auth_token"] == SecretStr("4.5")
    assert "12345678" not in repr(settings) and "12345678" not in str(settings.email)


def test_the_secret_key_rule_names_every_secret_field_of_every_provider_and_no_other() -> None:
    import importlib
    import pkgutil

    import tenant_notify.providers as providers
    from tenant_notify.providers.base import Provider
    from tenant_notify.tenants import _SECRET_KEY

    checked = 0
    for module in pkgutil.iter_modules(providers.__path__):
        namespace = vars(importlib.import_module(f"tenant_notify.providers.{module.name}"))
        for cls in namespace.values():
            if not (isinstance(cls, type) and issubclass(cls, Provider)):
                continue
            for name, field in cls.Config.model_fields.items():
                secret = "SecretStr" in str(field.annotation)
                assert bool(_SECRET_KEY.search(name)) == secret, (cls.__name__, name)
                checked += secret
    assert checked >= 10  # smtp, sendgrid, twilio, ses, sns, postmark: all of them
