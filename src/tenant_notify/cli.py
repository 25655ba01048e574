"""The ``tenant-notify`` command.

``demo`` sends a few notifications for two tenants into files; ``render`` shows a
template part as a tenant's recipient would get it; ``send`` sends one
notification; ``check-config`` validates settings; ``worker`` runs a Celery worker
for the ``celery`` transport and ``replay`` puts dead-lettered notifications back
on its queue; ``preview`` serves a local page of every kind as each tenant's
recipients would see it; ``events consume`` turns domain events from RabbitMQ into
notifications and ``events schemas`` lists, exports, validates and generates their
schemas; ``suppress list|add|remove`` edits a tenant's suppression list, ``resume``
lifts a sender-fault pause and ``check-domain`` looks up a tenant's SPF, DKIM and
DMARC records (:mod:`tenant_notify.reputation.commands`). Commands other than
``demo`` read settings from
``--config FILE`` or the ``TENANT_NOTIFY_*`` environment.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from . import __version__
from ._pool import ProviderPool
from .config import (
    CONFIG_FILE_VARIABLE,
    Settings,
    load_settings,
    require_tenants,
    settings_origin,
)
from .errors import ConfigurationError, NotifyError, WaitTimeoutError
from .log import LOGGER_NAME, mask_url
from .models import Channel, Notification, new_notification_id
from .notifier import Notifier
from .reputation import Reputation
from .reputation.commands import add_commands, reputation_summary
from .tenants import StaticTenantResolver, Tenant

_T = TypeVar("_T")

_PARTS = {"subject": "subject.txt", "text": "body.txt", "html": "body.html", "sms": "sms.txt"}


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests and daemons replace it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _configure_logging(verbose: bool) -> None:
    # The CLI is an application, so it may configure logging; the library never does.
    # Once per process: main() may run more than once in one (tests).
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
        logger.addHandler(handler)


def _settings(args: argparse.Namespace) -> Settings:
    """The settings every command reads: ``--config FILE`` means ``TENANT_NOTIFY_CONFIG_FILE=FILE``.

    The same for every command: the file, with ``TENANT_NOTIFY_*`` variables laid over it,
    as a host's ``Notifier.from_env()`` and a worker read them. The variable is set in this
    process's environment, so worker processes read the same file.
    """
    if getattr(args, "config", None):
        os.environ[CONFIG_FILE_VARIABLE] = str(Path(args.config).resolve())
    return load_settings(None)


def _notifier(args: argparse.Namespace, **options: Any) -> Notifier:
    return Notifier(_settings(args), **options)


def _json_context(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text, parse_float=Decimal)
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: --context is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise SystemExit("error: --context must be a JSON object")
    return value


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


# --- demo -----------------------------------------------------------------------------


def _demo_settings(out: Path, transport: str) -> dict[str, Any]:
    return {
        "transport": transport,
        "email": {"provider": "file", "directory": str(out / "platform")},
        "sms": {"provider": "file", "directory": str(out / "platform")},
        "tenants": {
            "acme": {
                "name": "Acme Shop",
                "email_from": "Acme Shop <orders@acme.test>",
                "sms_from": "+15005550006",
                "locale": "en",
                "branding": {"primary_color": "#b91c1c", "support_email": "help@acme.test"},
                "email": {"provider": "file", "directory": str(out / "acme")},
                "sms": {"provider": "file", "directory": str(out / "acme")},
            },
            "globex": {
                "name": "Globex Café",
                "email_from": "hello@globex.test",
                "locale": "de",
                "branding": {"primary_color": "#0f766e", "website_url": "https://globex.test"},
                "email": {"provider": "file", "directory": str(out / "globex")},
            },
        },
    }


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with Notifier.from_settings(_demo_settings(out, args.transport)) as notify:
        # The demo prints the recipients it made up itself; log lines mask them.
        sent = [
            (
                "jane@example.com",
                notify.send_order_confirmation(
                    order_id="A-1001",
                    customer_email="jane@example.com",
                    order_total=Decimal("99.99"),
                    currency="USD",
                    tenant_id="acme",
                    customer_name="Jane Doe",
                    items=[
                        {"name": "Anvil", "quantity": 1, "unit_price": Decimal("79.99")},
                        {"name": "Rope (10 m)", "quantity": 2, "unit_price": Decimal("10.00")},
                    ],
                ),
            ),
            (
                "max@example.com",
                notify.send_welcome_email(
                    user_email="max@example.com", user_name="Max Müller", tenant_id="globex"
                ),
            ),
            (
                "max@example.com",
                notify.send_order_confirmation(
                    order_id="G-77",
                    customer_email="max@example.com",
                    order_total=Decimal("1234.5"),
                    currency="EUR",
                    tenant_id="globex",
                    customer_name="Max Müller",
                ),
            ),
            (
                "+15551234567",
                notify.send_sms(
                    to_phone="+15551234567", body="Your order A-1001 has shipped.", tenant_id="acme"
                ),
            ),
        ]
        statuses = [receipt.wait(timeout=30) for _, receipt in sent]
        rows = [["KIND", "CHANNEL", "TENANT", "FROM", "TO", "STATUS", "FILE"]]
        for (to, receipt), status in zip(sent, statuses, strict=True):
            tenant = notify.tenants.get(receipt.tenant_id)
            sender = str(tenant.sender) if status.channel is Channel.EMAIL else tenant.sms_from
            rows.append(
                [
                    receipt.kind,
                    status.channel.value,
                    tenant.id,
                    sender or "",
                    to,
                    f"{status.state.value}: {status.error}" if status.error else status.state.value,
                    _shown_path(next(out.glob(f"*/*{receipt.id}*"), None)),
                ]
            )
    print(
        f"tenant-notify {__version__} demo: {len(sent)} notifications for 2 tenants, "
        f"'{args.transport}' transport, file provider\n"
    )
    print(_table(rows))
    print(
        f"\nThe files are in {out}: open the .eml files in a mail client, the .json files "
        "are the SMS."
    )
    print("Next: `tenant-notify render order_confirmation --tenant acme ...`, or see README.md.")
    return 0 if all(s.state.value == "sent" for s in statuses) else 1


def _shown_path(path: Path | None) -> str:
    if path is None:
        return "-"
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


# --- render ---------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    notify = _notifier(args, transport="eager")
    try:
        tenant = notify.tenants.get(args.tenant)
        channel = Channel.SMS if args.part == "sms" else Channel.EMAIL
        locale = args.locale or tenant.locale
        notify.dispatcher.renderer.check_kind(
            args.kind, channel, templates_dir=tenant.templates_dir, locale=locale
        )
        notification = Notification(
            id=new_notification_id(),
            tenant_id=tenant.id,
            kind=args.kind,
            channel=channel,
            to="",
            context={},
            locale=locale,
        )
        context = notify.dispatcher.template_context(notification, tenant, locale)
        context.update(_json_context(args.context))
        print(
            notify.dispatcher.renderer.render(
                args.kind,
                _PARTS[args.part],
                context,
                templates_dir=tenant.templates_dir,
                locale=locale,
            ).rstrip("\n")
        )
    finally:
        notify.close()
    return 0


# --- send -----------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace) -> int:
    with _notifier(args) as notify:
        receipt = notify.send(
            args.kind,
            tenant_id=args.tenant,
            to=args.to,
            channel=args.channel,
            context=_json_context(args.context),
            locale=args.locale,
            idempotency_key=args.idempotency_key,
        )
        try:
            status = receipt.wait(timeout=args.timeout)
        except WaitTimeoutError as err:
            print(f"{receipt.id} {err}", file=sys.stderr)
            return 1
    print(
        f"{receipt.id} {status.state.value} provider={status.provider} "
        f"provider_message_id={status.provider_message_id}"
        + (f" error={status.error}" if status.error else "")
    )
    return 0 if status.state.value == "sent" else 1


# --- check-config ---------------------------------------------------------------------


class _Problems:
    """Every configuration problem found, each once, with the key at fault."""

    def __init__(self) -> None:
        self.found: list[ConfigurationError] = []

    def add(self, err: ConfigurationError) -> None:
        for problem in err.problems or (err,):
            if all(str(problem) != str(seen) for seen in self.found):
                self.found.append(problem)

    def probe(self, check: Callable[[], _T]) -> _T | None:
        """Run ``check``; record the problem it raises instead of stopping."""
        try:
            return check()
        except ConfigurationError as err:
            self.add(err)
            return None


def _chain(problems: _Problems, pool: ProviderPool, tenant: Tenant | None, channel: Channel) -> str:
    """Build every provider of a channel's chain, as a delivery would; their names."""

    def build() -> str:
        names = pool.provider_names(tenant, channel)
        for position in range(len(names)):
            pool.get(tenant, channel, position)  # constructs it; opens no connection
        return " -> ".join(names)

    return problems.probe(build) or "(invalid)"


def _transport_probe(settings: Settings) -> Settings:
    # The transport, its stores, metrics and templates, as a host's notifier builds
    # them, with the provider tables (checked one by one above) left out, so a bad
    # provider table cannot hide a transport problem.
    return settings.model_copy(
        update={"email": {"provider": "memory"}, "sms": {"provider": "memory"}, "tenants": {}}
    )


def cmd_check_config(args: argparse.Namespace) -> int:
    problems = _Problems()
    settings = problems.probe(lambda: _settings(args))
    print(f"settings: {settings_origin()}")
    if settings is None:
        return _report(problems)
    backend = settings.transport.backend
    transport = None
    notify = problems.probe(lambda: Notifier(_transport_probe(settings)))
    events = None
    if notify is not None:
        transport, events = notify.transport, notify.events
        notify.close()
    print(f"transport: {backend}")
    from .transports.celery import CeleryTransport, check_settings, create_app

    if backend == "celery" or isinstance(transport, CeleryTransport):
        from .stores.redis import redis_url

        celery = settings.celery
        print(f"  broker: {mask_url(celery.broker_url)}")
        print(f"  queue: {celery.queue} (dead letters: {celery.dead_letter_queue or 'off'})")
        redis = f"{mask_url(redis_url(settings))} (key prefix {settings.redis.key_prefix!r})"
        print(f"  redis: {redis}")
        # What a worker builds and refuses, too (reported even without Celery installed).
        problems.probe(lambda: check_settings(settings))
        problems.probe(lambda: require_tenants(settings))
        problems.probe(lambda: create_app(settings))
    elif backend == "inprocess":
        workers, size = settings.transport.workers, settings.transport.queue_size
        print(f"  workers: {workers}, queue size: {size}")
    pool = ProviderPool.from_settings(settings)
    try:
        print(f"email provider: {_chain(problems, pool, None, Channel.EMAIL)}")
        print(f"sms provider: {_chain(problems, pool, None, Channel.SMS)}")
        tenants = list(settings.tenants.values())
        print(f"tenants: {len(tenants)}")
        for tenant in tenants:
            print(
                f"  {tenant.id}: {tenant.name!r} locale={tenant.locale} "
                f"email={_chain(problems, pool, tenant, Channel.EMAIL)} "
                f"sms={_chain(problems, pool, tenant, Channel.SMS)} "
                f"from={tenant.sender or '-'} sms_from={tenant.sms_from or '-'}"
            )
        print(reputation_summary(settings))
        reputation = Reputation(settings)

        for tenant in tenants:
            problems.probe(functools.partial(reputation.check_tenant, tenant, pool))
    finally:
        pool.close()
    if events is not None:
        print(
            f"events: {len(settings.events.rules)} rule(s) for {len(events.rules.types)} type(s), "
            f"schemas {events.rules.registry.directory if events.rules.registry else '-'}, "
            f"{'in process' if events.local else 'via ' + settings.events.exchange}"
        )
    return _report(problems)


def _report(problems: _Problems) -> int:
    if not problems.found:
        print("configuration OK")
        return 0
    for problem in problems.found:
        print(f"error: {type(problem).__name__}: {problem}", file=sys.stderr)
    print(f"{len(problems.found)} problem(s) in the configuration", file=sys.stderr)
    return 2


# --- worker and replay (celery transport) ---------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from .transports.celery import CeleryTransport, create_app
    from .transports.celery.message import Routes

    settings = _settings(args)
    # Fail now, naming the key, rather than in the first task.
    require_tenants(settings)
    Notifier(settings, transport=CeleryTransport).close()
    extra = list(args.celery_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if not (args.celery or extra or args.hostname):
        from .transports.celery.consumer import run_worker

        return run_worker(
            settings, processes=args.concurrency, threads=args.threads, loglevel=args.loglevel
        )
    # Celery's own worker: its pools, first in first out per queue.
    app = create_app(settings)
    queues = ",".join(Routes.from_settings(settings).names())
    argv = ["worker", f"--loglevel={args.loglevel}", "-Q", queues]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    app.worker_main(argv=[*argv, *extra])
    return 0


def cmd_backlog(args: argparse.Namespace) -> int:
    from .transports.celery.backlog import queue_backlog

    settings = _settings(args)
    if settings.transport.backend != "celery":
        print(
            "the in-process queue lives in the host's process: see its "
            "tenant_notify_backlog metric (docs/workers.md#backlog-and-waiting-time)",
            file=sys.stderr,
        )
        return 2
    rows = [["tenant", "queue", "waiting", "consumers", "oldest waited"]]
    for row in queue_backlog(settings):
        wait = "-" if row.oldest_wait is None else f"{row.oldest_wait:.1f}s"
        rows.append([row.tenant_id, row.queue, str(row.waiting), str(row.consumers), wait])
    print(_table(rows))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .transports.celery import replay_dead_letters

    settings = _settings(args)
    letters = replay_dead_letters(
        settings, limit=args.limit, dry_run=args.list, ids=args.id or None
    )
    rows = [["ID", "TENANT", "KIND", "TO", "ATTEMPTS", "FAILED AT", "ERROR"]]
    rows += [
        [d.id, d.tenant_id, d.kind, d.to, str(d.attempts), d.failed_at, d.error[:80]]
        for d in letters
    ]
    if len(rows) > 1:
        print(_table(rows))
    verb = "dead-lettered" if args.list else "replayed"
    print(f"{len(letters)} notification(s) {verb} ({settings.celery.dead_letter_queue})")
    return 0


def cmd_limits(args: argparse.Namespace) -> int:
    from .models import Channel

    with _notifier(args) as notify:
        limits = notify.dispatcher.limits
        if args.tenant:
            tenants = [notify.tenants.get(args.tenant)]
        elif isinstance(notify.tenants, StaticTenantResolver):
            tenants = list(notify.tenants)
        else:  # a resolver of the host's: its tenants are not known up front
            tenants = []
        rows = [["TENANT", "CHANNEL", "ON_LIMIT", "RATE", "LEFT IN WINDOW", "DAILY", "USED TODAY"]]
        for tenant in tenants:
            for channel in Channel:
                if not limits.for_tenant(tenant).limits(channel):
                    continue
                usage = limits.usage(tenant, channel)
                rows.append(
                    [
                        tenant.id,
                        channel.value,
                        str(usage["on_limit"]),
                        str(usage.get("rate", "-")),
                        str(usage.get("rate_remaining", "-")),
                        str(usage.get("daily", "-")),
                        str(usage.get("daily_used", "-")),
                    ]
                )
        if len(rows) > 1:
            print(_table(rows))
        print(f"{len(rows) - 1} limited tenant channel(s)")
        pauses = notify.dispatcher.pacing.pauses()
        if pauses:
            print(
                _table(
                    [["PAUSED PROVIDER ACCOUNT", "SECONDS LEFT"]]
                    + [[account, f"{left:.1f}"] for account, left in sorted(pauses.items())]
                )
            )
        print(f"{len(pauses)} paused provider account(s)")
    return 0


# --- preview --------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    from .preview import make_server

    settings = _settings(args)
    if "auto_reload" not in settings.templates.model_fields_set:
        # A preview is for editing templates: show each edit on reload, unless
        # the settings say otherwise.
        templates = settings.templates.model_copy(update={"auto_reload": True})
        settings = settings.model_copy(update={"templates": templates})
    with (
        Notifier(settings, transport="eager") as notify,
        make_server(notify, host=args.host, port=args.port) as server,
    ):
        print(f"tenant-notify preview on {server.url} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("preview stopped", file=sys.stderr)
    return 0


# --- events ---------------------------------------------------------------------------


def cmd_events_consume(args: argparse.Namespace) -> int:
    from .events.consumer import EventConsumer

    with _notifier(args) as notify:
        consumer = EventConsumer(notify)

        def stop(signum: int, frame: Any) -> None:
            consumer.stop()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        events = notify.settings.events
        print(
            f"consuming {events.queue} (exchange {events.exchange}, "
            f"keys {', '.join(consumer.routing_keys)})",
            file=sys.stderr,
            flush=True,
        )
        stats = consumer.run(max_events=args.max_events, idle_timeout=args.idle_timeout)
    print(
        f"{stats.received} event(s): {stats.acked} applied ({stats.notifications} "
        f"notification(s), {stats.duplicates} seen before), {stats.dead_lettered} "
        f"dead-lettered, {stats.requeued} requeued"
    )
    return 0


def _registry(args: argparse.Namespace) -> Any:
    from .events.schemas import SchemaRegistry

    settings = _settings(args)
    folder = args.dir or settings.events.schemas_dir
    if folder is None:
        raise SystemExit("error: no schemas folder: set [events] schemas_dir or pass --dir")
    return settings, SchemaRegistry(folder)


def cmd_events_schemas_list(args: argparse.Namespace) -> int:
    settings, registry = _registry(args)
    kinds: dict[str, list[str]] = {}
    for rule in settings.events.rules:
        kinds.setdefault(rule.type, []).append(f"{rule.kind}/{rule.channel}")
    rows = [["TYPE", "VERSION", "FILE", "RULES"]]
    rows += [
        [s.type, f"v{s.version}", s.path.name, ", ".join(kinds.get(s.type, [])) or "-"]
        for s in registry
    ]
    if len(rows) > 1:
        print(_table(rows))
    unmapped = sorted(set(kinds) - set(registry.types()))
    print(f"{len(rows) - 1} schema(s) of {len(registry.types())} type(s) in {registry.directory}")
    for event_type in unmapped:
        print(f"warning: rules map {event_type}, which has no schema", file=sys.stderr)
    return 1 if unmapped else 0


def cmd_events_schemas_export(args: argparse.Namespace) -> int:
    _, registry = _registry(args)
    wanted = set(args.type or registry.types())
    unknown = sorted(wanted - set(registry.types()))
    if unknown:
        raise SystemExit(f"error: no schema for {', '.join(unknown)}")
    bundle: dict[str, dict[str, Any]] = {}
    for schema in registry:
        if schema.type in wanted:
            bundle.setdefault(schema.type, {})[f"v{schema.version}"] = schema.schema
    text = json.dumps(bundle, indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {sum(len(v) for v in bundle.values())} schema(s) to {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_events_schemas_validate(args: argparse.Namespace) -> int:
    from .errors import EventError
    from .events.envelope import parse_event

    _, registry = _registry(args)
    failures = 0
    for name in args.events:
        body = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        try:
            event = parse_event(body)
            schema = registry.validate(event)
        except EventError as err:
            failures += 1
            print(f"{name}: invalid ({err.reason}): {err}")
        else:
            print(f"{name}: ok ({event.type} v{schema.version})")
    return 1 if failures else 0


def cmd_events_schemas_generate(args: argparse.Namespace) -> int:
    import importlib

    from .events.schemas import write_schema

    module_name, _, attribute = args.model.partition(":")
    if not attribute:
        raise SystemExit("error: MODEL is module:Class, such as myapp.events:OrderCreated")
    # As `python -m` would: the host's own modules, from where it runs the command.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    model = getattr(importlib.import_module(module_name), attribute)
    if args.dir:
        folder = Path(args.dir)
    else:
        settings = _settings(args)
        if settings.events.schemas_dir is None:
            raise SystemExit("error: no schemas folder: set [events] schemas_dir or pass --dir")
        folder = settings.events.schemas_dir
    path = write_schema(folder, args.type, model, version=args.version)
    print(path)
    return 0


# --- entry point ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tenant-notify",
        description="Send, render and preview tenant notifications; run workers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every delivery (info level) to stderr; without it only warnings and errors",
    )
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        title="commands",
        help="`tenant-notify COMMAND --help` shows a command's options",
    )

    demo = commands.add_parser("demo", help="send sample notifications for two tenants to files")
    demo.add_argument(
        "--out",
        default="tenant-notify-demo",
        help="folder for the files (default: ./tenant-notify-demo)",
    )
    demo.add_argument(
        "--transport",
        default="inprocess",
        choices=["inprocess", "eager"],
        help="deliver on background threads or inline (default: inprocess)",
    )
    demo.set_defaults(func=cmd_demo)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--config",
            metavar="FILE",
            help=(
                "TOML or YAML settings file, read as TENANT_NOTIFY_CONFIG_FILE is: "
                "TENANT_NOTIFY_* variables still apply over it (default: the environment)"
            ),
        )

    render = commands.add_parser("render", help="render one part of a kind for a tenant")
    render.add_argument("kind", help="template kind: order_confirmation, welcome, ... or your own")
    render.add_argument("--tenant", required=True, help="tenant id whose templates and branding")
    render.add_argument(
        "--context", help="template fields as a JSON object (numbers read as Decimal)"
    )
    render.add_argument(
        "--part",
        choices=sorted(_PARTS),
        default="text",
        help="which part: subject.txt, body.txt, body.html or sms.txt (default: text)",
    )
    render.add_argument(
        "--locale", help="locale to render in, e.g. de or fr-CH (default: the tenant's)"
    )
    with_config(render)
    render.set_defaults(func=cmd_render)

    send = commands.add_parser("send", help="send one notification and wait for its status")
    send.add_argument("kind", help="email, sms, welcome, order_confirmation or your own kind")
    send.add_argument("--tenant", required=True, help="tenant id to send as")
    send.add_argument(
        "--to", required=True, help="email address, or E.164 number with --channel sms"
    )
    send.add_argument(
        "--channel", choices=["email", "sms"], default="email", help="channel (default: email)"
    )
    send.add_argument(
        "--context", help="template fields as a JSON object (numbers read as Decimal)"
    )
    send.add_argument("--locale", help="locale override (default: the tenant's)")
    send.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="sending again with the same key (per tenant) sends nothing",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a final status (default: 60)",
    )
    with_config(send)
    send.set_defaults(func=cmd_send)

    check = commands.add_parser(
        "check-config",
        help="build everything a notifier and a worker would; list every problem",
    )
    with_config(check)
    check.set_defaults(func=cmd_check_config)

    worker = commands.add_parser(
        "worker", help="run worker processes for the celery transport (needs [celery])"
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        help="worker processes (default: [celery] concurrency, else the CPU count)",
    )
    worker.add_argument(
        "--threads",
        type=int,
        help="deliveries at once in each process (default: [celery] threads, 32)",
    )
    worker.add_argument(
        "--celery",
        action="store_true",
        help="run Celery's own worker instead (as do --hostname and options after --)",
    )
    worker.add_argument(
        "--loglevel",
        default="INFO",
        help="level of Celery's and the library's log records (default: INFO)",
    )
    worker.add_argument("--hostname", help="worker node name (default: celery@HOST)")
    worker.add_argument(
        "celery_args", nargs=argparse.REMAINDER, help="more `celery worker` options, after --"
    )
    with_config(worker)
    # Celery sets up logging itself (root handlers at --loglevel); the library's
    # records reach them through the root logger.
    worker.set_defaults(func=cmd_worker, celery_logging=True)

    backlog = commands.add_parser(
        "backlog", help="notifications waiting on the broker, by tenant (celery transport)"
    )
    with_config(backlog)
    backlog.set_defaults(func=cmd_backlog)

    replay = commands.add_parser(
        "replay", help="put dead-lettered notifications back on the Celery queue"
    )
    replay.add_argument(
        "--list", action="store_true", help="only list them (recipients masked); change nothing"
    )
    replay.add_argument("--limit", type=int, help="at most this many, oldest first")
    replay.add_argument("--id", action="append", help="only this notification id (repeatable)")
    with_config(replay)
    replay.set_defaults(func=cmd_replay)

    limits = commands.add_parser(
        "limits",
        help="show tenants' rate limits and daily caps, what is left of them, and paused "
        "provider accounts",
    )
    limits.add_argument("tenant", nargs="?", help="only this tenant (default: every one)")
    with_config(limits)
    limits.set_defaults(func=cmd_limits)

    preview = commands.add_parser(
        "preview", help="serve a local page showing every kind for every tenant and locale"
    )
    preview.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    preview.add_argument(
        "--port", type=int, default=8025, help="port (default: 8025; 0 picks a free one)"
    )
    with_config(preview)
    preview.set_defaults(func=cmd_preview)

    events = commands.add_parser(
        "events", help="domain events: consume them from RabbitMQ, manage their schemas"
    )
    events_commands = events.add_subparsers(
        dest="events_command", required=True, title="commands", help="consume or schemas"
    )
    consume = events_commands.add_parser(
        "consume",
        help="turn CloudEvents from [events] queue into notifications by [[events.rules]]",
    )
    consume.add_argument(
        "--max-events", type=int, help="stop after this many events (default: run until stopped)"
    )
    consume.add_argument(
        "--idle-timeout",
        type=float,
        help="stop after this many seconds without an event (default: never)",
    )
    with_config(consume)
    consume.set_defaults(func=cmd_events_consume)

    schemas = events_commands.add_parser(
        "schemas", help="list, export, validate against and generate event schemas"
    )
    schema_commands = schemas.add_subparsers(
        dest="schemas_command",
        required=True,
        title="commands",
        help="list, export, validate or generate",
    )

    def with_dir(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--dir", help="schemas folder (default: [events] schemas_dir)")
        with_config(sub)

    listing = schema_commands.add_parser(
        "list", help="list every type and version, and the rules that use it"
    )
    with_dir(listing)
    listing.set_defaults(func=cmd_events_schemas_list)
    export = schema_commands.add_parser(
        "export", help="print the schemas as one JSON document {type: {vN: schema}}"
    )
    export.add_argument("type", nargs="*", help="only these event types (default: all)")
    export.add_argument("--out", help="write to this file instead of standard output")
    with_dir(export)
    export.set_defaults(func=cmd_events_schemas_export)
    validate = schema_commands.add_parser(
        "validate", help="check CloudEvents JSON files against their schemas"
    )
    validate.add_argument("events", nargs="+", help="event files ('-' for standard input)")
    with_dir(validate)
    validate.set_defaults(func=cmd_events_schemas_validate)
    generate = schema_commands.add_parser(
        "generate", help="write a type's schema from a pydantic model (the next version)"
    )
    generate.add_argument("model", help="the pydantic model, as module:Class")
    generate.add_argument("--type", required=True, help="the CloudEvents type it describes")
    generate.add_argument(
        "--version", type=int, help="version number (default: the next, unless unchanged)"
    )
    with_dir(generate)
    generate.set_defaults(func=cmd_events_schemas_generate)

    add_commands(commands, with_config, _notifier, _table)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "celery_logging", False):
        _configure_logging(args.verbose)
    try:
        code: int = args.func(args)
    except NotifyError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
