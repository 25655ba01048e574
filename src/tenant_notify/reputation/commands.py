"""The reputation commands of ``tenant-notify``: ``suppress``, ``resume``, ``check-domain``.

:func:`add_commands` registers them on the CLI's parser (``tenant_notify.cli``);
each reads the settings as every other command does (``--config FILE`` or the
environment), so on the ``celery`` transport it works on the Redis lists and
pauses the web processes and workers share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..config import Settings
from ..log import mask_recipient
from ..models import Channel
from .domain import Status, check_domain, make_resolver

__all__ = ["add_commands", "reputation_summary"]

NotifierFactory = Callable[[argparse.Namespace], Any]


def reputation_summary(settings: Settings) -> str:
    """The ``reputation:`` line of ``tenant-notify check-config``."""
    breaker = settings.breaker
    pauses = (
        f"{breaker.threshold} sender faults in {breaker.window:g}s pause {breaker.cooldown:g}s"
        if breaker.enabled
        else "off"
    )
    bulk = sorted(name for name, kind in settings.kinds.items() if not kind.transactional)
    tracked = sorted(t.id for t in settings.tenants.values() if t.track_opens or t.track_clicks)
    return (
        f"reputation: breaker {pauses}; links {settings.links.base_url or 'off'}; "
        f"unsubscribe headers on {', '.join(bulk) or 'no kind'}; "
        f"tracking for {', '.join(tracked) or 'no tenant'}"
    )


def _shared(notify: Any) -> None:
    """Refuse to edit a list that lives only in this command's memory."""
    if notify.reputation.store.answers_locally:
        raise SystemExit(
            "error: the suppression lists and pauses are kept in memory by the "
            f"{notify.transport.name!r} transport, so this command cannot reach a running "
            "application's; use notify.suppressions / notify.breaker in it, or the celery "
            "transport (Redis)"
        )


def cmd_suppress_list(args: argparse.Namespace) -> int:
    with args.make_notifier(args) as notify:
        _shared(notify)
        entries = notify.suppressions.list(args.tenant, channel=args.channel, limit=args.limit)
    mask = (lambda value: value) if args.unmasked else mask_recipient
    rows = [["RECIPIENT", "CHANNEL", "REASON", "CATEGORY", "SOURCE", "SINCE"]]
    rows += [
        [
            mask(e.recipient),
            e.channel.value,
            e.reason.value,
            e.category or "(all)",
            e.source,
            e.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for e in entries
    ]
    if len(rows) > 1:
        print(args.table(rows))
    print(f"{len(entries)} suppressed recipient(s) for {args.tenant}")
    return 0


def cmd_suppress_add(args: argparse.Namespace) -> int:
    with args.make_notifier(args) as notify:
        _shared(notify)
        notify.tenants.get(args.tenant)
        entry = notify.suppressions.add(
            args.tenant,
            args.recipient,
            channel=args.channel,
            reason=args.reason,
            category=args.category,
            source="cli",
        )
    scope = f" from {entry.category}" if entry.category else ""
    print(f"suppressed {mask_recipient(entry.recipient)} ({entry.channel.value}{scope})")
    return 0


def cmd_suppress_remove(args: argparse.Namespace) -> int:
    with args.make_notifier(args) as notify:
        _shared(notify)
        removed = notify.suppressions.remove(
            args.tenant, args.recipient, channel=args.channel, category=args.category, source="cli"
        )
    print(f"lifted {removed} suppression(s) of {mask_recipient(args.recipient)}")
    return 0 if removed else 1


def cmd_resume(args: argparse.Namespace) -> int:
    with args.make_notifier(args) as notify:
        _shared(notify)
        notify.tenants.get(args.tenant)
        channel = Channel(args.channel) if args.channel else None
        resumed = notify.breaker.resume(args.tenant, channel)
    if not resumed:
        print(f"{args.tenant}: nothing was paused")
        return 1
    print(f"{args.tenant}: resumed {', '.join(ch.value for ch in resumed)}")
    return 0


def cmd_check_domain(args: argparse.Namespace) -> int:
    with args.make_notifier(args, transport="eager") as notify:
        tenant = notify.tenants.get(args.tenant)
        # The SMTP provider's DKIM settings, when the tenant signs itself.
        config = notify.dispatcher.providers.provider_config(tenant, Channel.EMAIL)
    if tenant.email_from is None:
        raise SystemExit(f"error: tenant {args.tenant!r} has no email_from")
    domain = tenant.email_from.email.rpartition("@")[2].lower()
    selector = args.selector or getattr(config, "dkim_selector", None)
    key = getattr(config, "dkim_private_key", None)
    report = check_domain(
        domain,
        selector=selector,
        signing_domain=getattr(config, "dkim_domain", None),
        private_key=key.get_secret_value() if key is not None else None,
        resolver=make_resolver(args.nameserver, timeout=args.timeout),
    )
    print(f"{args.tenant}: sending domain {domain}")
    for finding in report.findings:
        print(f"  {finding.status.value:<10} {finding.record:<5} {finding.name}: {finding.message}")
        if finding.value and args.show_records:
            print(f"             {finding.value}")
    bad = [f for f in report.findings if f.status not in (Status.OK, Status.WARNING)]
    if bad:
        print(f"{len(bad)} record(s) need attention", file=sys.stderr)
        return 1
    warned = any(f.status is Status.WARNING for f in report.findings)
    print("records OK" + (" (with warnings)" if warned else ""))
    return 0


def add_commands(
    commands: Any,
    with_config: Callable[[argparse.ArgumentParser], None],
    make_notifier: NotifierFactory,
    table: Callable[[list[list[str]]], str],
) -> None:
    """Add ``suppress``, ``resume`` and ``check-domain`` to the CLI's subparsers."""

    def common(sub: argparse.ArgumentParser) -> None:
        with_config(sub)
        sub.set_defaults(make_notifier=make_notifier, table=table)

    suppress = commands.add_parser(
        "suppress", help="list, add or remove recipients on a tenant's suppression list"
    )
    suppress_commands = suppress.add_subparsers(
        dest="suppress_command", required=True, title="commands", help="list, add or remove"
    )

    def recipient_options(sub: argparse.ArgumentParser, *, reason: bool) -> None:
        sub.add_argument("tenant", help="tenant id whose list")
        sub.add_argument("recipient", help="email address, or E.164 number with --channel sms")
        sub.add_argument(
            "--channel", choices=["email", "sms"], default="email", help="channel (default: email)"
        )
        sub.add_argument(
            "--category",
            help=(
                "only sends of this kind category (e.g. marketing); default: every category"
                if reason
                else "lift only the entry of this category; default: every entry"
            ),
        )
        if reason:
            sub.add_argument(
                "--reason",
                choices=["manual", "hard_bounce", "complaint", "unsubscribe"],
                default="manual",
                help="why, as the list shows it (default: manual)",
            )
        common(sub)

    listing = suppress_commands.add_parser("list", help="show a tenant's suppressed recipients")
    listing.add_argument("tenant", help="tenant id whose list")
    listing.add_argument(
        "--channel", choices=["email", "sms"], help="only this channel (default: both)"
    )
    listing.add_argument("--limit", type=int, help="at most this many, newest first")
    listing.add_argument(
        "--unmasked", action="store_true", help="show recipients in full (default: masked)"
    )
    common(listing)
    listing.set_defaults(func=cmd_suppress_list)

    add = suppress_commands.add_parser("add", help="suppress a recipient for a tenant")
    recipient_options(add, reason=True)
    add.set_defaults(func=cmd_suppress_add)

    remove = suppress_commands.add_parser(
        "remove", help="lift a recipient's suppression (exit 1 when there was none)"
    )
    recipient_options(remove, reason=False)
    remove.set_defaults(func=cmd_suppress_remove)

    resume = commands.add_parser(
        "resume",
        help="lift the sender-fault pause of a tenant's channel (exit 1 when none was paused)",
    )
    resume.add_argument("tenant", help="tenant id to resume")
    resume.add_argument(
        "--channel", choices=["email", "sms"], help="only this channel (default: both)"
    )
    common(resume)
    resume.set_defaults(func=cmd_resume)

    domain = commands.add_parser(
        "check-domain",
        help="look up the SPF, DKIM and DMARC records of a tenant's sending domain",
    )
    domain.add_argument("tenant", help="tenant id whose email_from domain to check")
    domain.add_argument(
        "--selector",
        help="DKIM selector to look up (default: dkim_selector of the tenant's SMTP table)",
    )
    domain.add_argument(
        "--nameserver",
        metavar="HOST[:PORT]",
        help="ask this DNS server instead of the system's resolver",
    )
    domain.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per lookup (default: 5)"
    )
    domain.add_argument(
        "--show-records", action="store_true", help="print each record found under its verdict"
    )
    common(domain)
    domain.set_defaults(func=cmd_check_domain)
