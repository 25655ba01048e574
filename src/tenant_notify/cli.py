"""The ``tenant-notify`` command.

``demo`` sends a few notifications for two tenants into files; ``render`` shows a
template part as a tenant's recipient would get it; ``send`` sends one
notification; ``check-config`` validates settings; ``worker`` runs a Celery worker
for the ``celery`` transport and ``replay`` puts dead-lettered notifications back
on its queue; ``preview`` serves a local page of every kind as each tenant's
recipients would see it; ``events consume`` turns domain events from RabbitMQ into
notifications and ``events schemas`` lists, exports, validates and generates their
schemas. Commands other than ``demo`` read settings from
``--config FILE`` or the ``TENANT_NOTIFY_*`` environment.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import structlog

from . import __version__
from .errors import NotifyError, WaitTimeoutError
from .models import Channel, Notification, new_notification_id
from .notifier import Notifier

_PARTS = {"subject": "subject.txt", "text": "body.txt", "html": "body.html", "sms": "sms.txt"}


def _configure_logging(verbose: bool) -> None:
    # The CLI is an application, so it may configure structlog; the library never does.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.INFO if verbose else logging.WARNING
        ),
        # sys.stderr looked up per logger, so a replaced stderr (tests, daemons) is honoured.
        logger_factory=lambda *args: structlog.PrintLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _notifier(args: argparse.Namespace, **options: Any) -> Notifier:
    if args.config:
        return Notifier.from_settings(Path(args.config), **options)
    return Notifier.from_env(**options)


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


def cmd_check_config(args: argparse.Namespace) -> int:
    notify = _notifier(args, transport="eager")
    try:
        settings = notify.settings
        print(f"transport: {settings.transport.backend}")
        print(f"email provider: {settings.email['provider']}")
        print(f"sms provider: {settings.sms['provider']}")
        tenants = list(settings.tenants.values())
        print(f"tenants: {len(tenants)}")
        pool = notify.dispatcher.providers
        for tenant in tenants:
            print(
                f"  {tenant.id}: {tenant.name!r} locale={tenant.locale} "
                f"email={pool.provider_name(tenant, Channel.EMAIL)} "
                f"sms={pool.provider_name(tenant, Channel.SMS)} "
                f"from={tenant.sender or '-'} sms_from={tenant.sms_from or '-'}"
            )
        events = notify.events
        print(
            f"events: {len(settings.events.rules)} rule(s) for {len(events.rules.types)} type(s), "
            f"schemas {events.rules.registry.directory if events.rules.registry else '-'}, "
            f"{'in process' if events.local else 'via ' + settings.events.exchange}"
        )
        print("configuration OK")
    finally:
        notify.close()
    return 0


# --- worker and replay (celery transport) ---------------------------------------------


def _celery_settings(args: argparse.Namespace) -> Any:
    from .config import load_settings

    if args.config:
        # Read by the worker's processes too, whatever starts them.
        os.environ["TENANT_NOTIFY_CONFIG_FILE"] = str(Path(args.config).resolve())
    return load_settings(None)


def cmd_worker(args: argparse.Namespace) -> int:
    from .transports.celery import CeleryTransport, create_app

    settings = _celery_settings(args)
    # Fail now, naming the key, rather than in the first task.
    Notifier(settings, transport=CeleryTransport).close()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(args.loglevel.upper(), logging.INFO)
        ),
        cache_logger_on_first_use=False,
    )
    app = create_app(settings)
    argv = ["worker", f"--loglevel={args.loglevel}", "-Q", settings.celery.queue]
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    extra = list(args.celery_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    app.worker_main(argv=[*argv, *extra])
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .transports.celery import replay_dead_letters

    settings = _celery_settings(args)
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


# --- preview --------------------------------------------------------------------------


def cmd_preview(args: argparse.Namespace) -> int:
    from .preview import make_server

    with (
        _notifier(args, transport="eager") as notify,
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
    from .config import load_settings
    from .events.schemas import SchemaRegistry

    settings = load_settings(Path(args.config) if args.config else None)
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
        from .config import load_settings

        settings = load_settings(Path(args.config) if args.config else None)
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
    parser.add_argument("-v", "--verbose", action="store_true", help="log each delivery")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="send sample notifications for two tenants to files")
    demo.add_argument(
        "--out",
        default="tenant-notify-demo",
        help="folder for the files (default: ./tenant-notify-demo)",
    )
    demo.add_argument("--transport", default="inprocess", choices=["inprocess", "eager"])
    demo.set_defaults(func=cmd_demo)

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", help="TOML or YAML settings file (default: environment)")

    render = commands.add_parser("render", help="render one part of a kind for a tenant")
    render.add_argument("kind")
    render.add_argument("--tenant", required=True)
    render.add_argument("--context", help="template fields as a JSON object")
    render.add_argument("--part", choices=sorted(_PARTS), default="text")
    render.add_argument("--locale")
    with_config(render)
    render.set_defaults(func=cmd_render)

    send = commands.add_parser("send", help="send one notification and wait for its status")
    send.add_argument("kind")
    send.add_argument("--tenant", required=True)
    send.add_argument("--to", required=True)
    send.add_argument("--channel", choices=["email", "sms"], default="email")
    send.add_argument("--context", help="template fields as a JSON object")
    send.add_argument("--locale")
    send.add_argument("--idempotency-key")
    send.add_argument("--timeout", type=float, default=60.0)
    with_config(send)
    send.set_defaults(func=cmd_send)

    check = commands.add_parser("check-config", help="validate settings and list tenants")
    with_config(check)
    check.set_defaults(func=cmd_check_config)

    worker = commands.add_parser(
        "worker", help="run a Celery worker for the celery transport (needs [celery])"
    )
    worker.add_argument("-c", "--concurrency", type=int, help="worker processes")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--hostname", help="worker node name (default: celery@HOST)")
    worker.add_argument(
        "celery_args", nargs=argparse.REMAINDER, help="more `celery worker` options, after --"
    )
    with_config(worker)
    worker.set_defaults(func=cmd_worker)

    replay = commands.add_parser(
        "replay", help="put dead-lettered notifications back on the Celery queue"
    )
    replay.add_argument("--list", action="store_true", help="only list them")
    replay.add_argument("--limit", type=int, help="at most this many")
    replay.add_argument("--id", action="append", help="only this notification id (repeatable)")
    with_config(replay)
    replay.set_defaults(func=cmd_replay)

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
    events_commands = events.add_subparsers(dest="events_command", required=True)
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
    schema_commands = schemas.add_subparsers(dest="schemas_command", required=True)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        code: int = args.func(args)
    except NotifyError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
