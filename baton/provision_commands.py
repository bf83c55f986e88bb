"""``baton provision`` and ``baton keys``: broker accounts and signing keys.

``baton provision`` derives one least-privilege broker account per declared
service (messaging/provision.py) and either applies it through the management
API or exports a definitions file for the broker to load at boot. Passwords come
from a directory of secret files named after the accounts (compose secrets), or
from ``BATON_PASSWORD_<SERVICE>`` variables; they are never generated into a file
of the repository.

``baton keys`` makes a service's Ed25519 signing key and keeps the public key ring
that consumers verify against; rotation is: generate, deploy, retire the old key
with a grace period longer than ``BATON_ORIGIN_TTL``. Running consumers read the
ring again when its file changes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from messaging.declaration import ServiceDeclaration
from messaging.errors import TrustConfigError
from messaging.keyring import KeyRing, SigningKey
from messaging.provision import AccountGrant, Management, definitions, plan
from messaging.selfcheck import check_exchanges, check_grants, read_grant
from messaging.settings import BrokerSettings
from messaging.signing import CLOCK_SKEW
from messaging.topology import Topology
from messaging.trust import Accounts

DEFAULT_DECLARATIONS = "baton.provision_commands:reference_declarations"
# Added to BATON_ORIGIN_TTL for the default grace: clock skew and a short backlog.
GRACE_MARGIN = 300.0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _register_provision(commands)
    _register_keys(commands)


def _register_provision(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "provision",
        help="create the per-service broker accounts from the declarations",
        description=(
            "Derive one least-privilege broker account per declared service and "
            "apply it through the management API (BATON_MANAGEMENT_URL), or "
            "export a definitions file for the broker to load at boot."
        ),
    )
    parser.add_argument(
        "--declarations",
        default=DEFAULT_DECLARATIONS,
        metavar="MODULE:NAME",
        help="the list of ServiceDeclaration to provision",
    )
    parser.add_argument("--vhost", default="/", help="the deployment's vhost")
    parser.add_argument("--prefix", help="topology prefix (default BATON_PREFIX)")
    parser.add_argument(
        "--account-prefix", help="account name prefix (default BATON_ACCOUNT_PREFIX)"
    )
    parser.add_argument(
        "--passwords-dir", type=Path, help="directory of files named after the accounts"
    )
    parser.add_argument(
        "--export",
        type=Path,
        metavar="FILE",
        help="write a definitions file instead of applying",
    )
    parser.add_argument(
        "--operator",
        help="with --export: also an administrator account of this name",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only compare the broker's accounts with the plan",
    )
    parser.add_argument(
        "--exclusive",
        action="store_true",
        help="with --check: also refuse any other account on the broker (guest)",
    )
    parser.add_argument(
        "--show", action="store_true", help="print the plan (no passwords) and exit"
    )
    parser.set_defaults(run=run_provision)


def _register_keys(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    parser = commands.add_parser(
        "keys", help="make signing keys and keep the public key ring"
    )
    actions = parser.add_subparsers(dest="keys_command", required=True)

    generate = actions.add_parser("generate", help="a new key for a service")
    generate.add_argument("service")
    generate.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="where the private key file is written (mode 0600)",
    )
    generate.add_argument(
        "--out", type=Path, help="the private key file (default <dir>/<kid>.key)"
    )
    generate.add_argument(
        "--keyring",
        type=Path,
        required=True,
        help="the public key ring to add the key to",
    )
    generate.set_defaults(run=run_keys_generate)

    retire = actions.add_parser("retire", help="refuse a key after a grace period")
    retire.add_argument("kid")
    retire.add_argument("--keyring", type=Path, required=True)
    retire.add_argument(
        "--grace",
        type=float,
        help=(
            "seconds the old key still verifies; longer than BATON_ORIGIN_TTL, "
            "since origins travel that long (default BATON_ORIGIN_TTL + "
            f"{GRACE_MARGIN:.0f}; 0 after a leak)"
        ),
    )
    retire.set_defaults(run=run_keys_retire)

    listing = actions.add_parser("list", help="the keys in a ring")
    listing.add_argument("--keyring", type=Path, required=True)
    listing.set_defaults(run=run_keys_list)


def run_provision(args: argparse.Namespace) -> int:
    settings = BrokerSettings()
    prefix = args.prefix or settings.prefix
    accounts = Accounts(
        settings.account_prefix if args.account_prefix is None else args.account_prefix
    )
    try:
        declared = load_declarations(args.declarations)
        topology = replace(settings.topology(), prefix=prefix)
        grants = plan(topology, declared, accounts)
        if args.show:
            _show(grants)
            return 0
        if args.check:
            return _check(
                settings, args.vhost, topology, grants, exclusive=args.exclusive
            )
        passwords = read_passwords(grants, args.passwords_dir)
        if args.export is not None:
            if args.operator:
                passwords[args.operator] = _operator_password(
                    args.operator, args.passwords_dir
                )
            document = definitions(
                args.vhost, topology, grants, passwords, operator=args.operator
            )
            _write_secret(args.export, json.dumps(document, indent=2) + "\n")
            print(f"wrote definitions for {len(grants)} accounts to {args.export}")
            return 0
        with Management(_management_url(settings)) as management:
            management.apply(args.vhost, topology, grants, passwords)
    except TrustConfigError as exc:
        print(f"baton provision: {exc}", file=sys.stderr)
        return 1
    print(f"provisioned {len(grants)} accounts in vhost {args.vhost!r}")
    return 0


def load_declarations(target: str) -> list[ServiceDeclaration]:
    """The declarations named by ``module:attribute``."""
    module_name, _, attribute = target.partition(":")
    try:
        value = getattr(
            importlib.import_module(module_name), attribute or "DECLARATIONS"
        )
    except (ImportError, AttributeError) as exc:
        raise TrustConfigError(f"cannot load declarations {target!r}: {exc}") from exc
    declared = list(value() if callable(value) else value)
    if not declared or not all(isinstance(d, ServiceDeclaration) for d in declared):
        raise TrustConfigError(f"{target!r} is not a list of ServiceDeclaration")
    return declared


def reference_declarations() -> list[ServiceDeclaration]:
    """The reference deployment: the edge, each reference service, the scheduler.

    The services declare themselves when built, which opens their databases: they
    are built over a throw-away directory and closed again.
    """
    from edge_api.declaration import edge_declaration
    from workers.settings import WorkerSettings
    from workers.system import SERVICES, build, build_scheduler

    declared = [edge_declaration()]
    with tempfile.TemporaryDirectory() as state:
        settings = WorkerSettings(state_dir=Path(state))
        for name in SERVICES:
            part = build(name, settings)
            declared.append(part.service.declaration())
            part.close()
        declared.append(build_scheduler(settings).service.declaration())
    return declared


def read_passwords(
    grants: Sequence[AccountGrant], directory: Path | None
) -> dict[str, str]:
    """Each account's password, from its secret file or its environment variable."""
    passwords: dict[str, str] = {}
    for grant in grants:
        variable = "BATON_PASSWORD_" + grant.service.upper().replace("-", "_")
        if directory is not None and (directory / grant.user).is_file():
            passwords[grant.user] = (directory / grant.user).read_text().strip()
        elif os.environ.get(variable):
            passwords[grant.user] = os.environ[variable]
        else:
            raise TrustConfigError(
                f"no password for account {grant.user}: put it in "
                f"<passwords-dir>/{grant.user} or {variable}"
            )
    return passwords


def _operator_password(user: str, directory: Path | None) -> str:
    if directory is not None and (directory / user).is_file():
        return (directory / user).read_text().strip()
    if os.environ.get("BATON_OPERATOR_PASSWORD"):
        return os.environ["BATON_OPERATOR_PASSWORD"]
    raise TrustConfigError(
        f"no password for the operator {user}: put it in <passwords-dir>/{user} "
        "or BATON_OPERATOR_PASSWORD"
    )


def run_keys_generate(args: argparse.Namespace) -> int:
    key = SigningKey.generate(args.service)
    args.dir.mkdir(parents=True, exist_ok=True)
    key_file = args.out or args.dir / f"{key.kid}.key"
    key.save(key_file)
    ring = KeyRing.load(args.keyring) if args.keyring.exists() else KeyRing()
    ring.with_key(key.public()).save(args.keyring)
    print(f"{key.kid}: private key {key_file}, public key added to {args.keyring}")
    return 0


def run_keys_retire(args: argparse.Namespace) -> int:
    origin_ttl = BrokerSettings().origin_ttl
    if args.grace is None:
        args.grace = origin_ttl + GRACE_MARGIN
    if 0 < args.grace < origin_ttl + CLOCK_SKEW:
        print(
            f"baton keys: warning: --grace {args.grace:.0f} is shorter than "
            f"BATON_ORIGIN_TTL ({origin_ttl:.0f} s) plus {CLOCK_SKEW:.0f} s of "
            "clock skew: work that entered under the old key before it was "
            "replaced will be refused on its way",
            file=sys.stderr,
        )
    try:
        ring = KeyRing.load(args.keyring)
        ring.retiring(args.kid, time.time() + args.grace).save(args.keyring)
    except TrustConfigError as exc:
        print(f"baton keys: {exc}", file=sys.stderr)
        return 1
    print(f"{args.kid} verifies for {args.grace:.0f}s more, then is refused")
    return 0


def run_keys_list(args: argparse.Namespace) -> int:
    for key in KeyRing.load(args.keyring):
        until = "" if key.retire_after is None else f" retires {key.retire_after:.0f}"
        print(f"{key.kid}\t{key.service}{until}")
    return 0


def _check(
    settings: BrokerSettings,
    vhost: str,
    topology: Topology,
    grants: Sequence[AccountGrant],
    *,
    exclusive: bool,
) -> int:
    url = _management_url(settings)
    with Management(url) as management:
        problems = check_exchanges(management, vhost, topology)
        for grant in grants:
            actual = read_grant(management, vhost, grant.user, grant.service)
            problems += check_grants(actual, grant)
        if exclusive:
            known = {grant.user for grant in grants} | {urlsplit(url).username}
            others = sorted(
                user["name"]
                for user in management.get("/api/users")
                if user["name"] not in known
            )
            problems += [f"unexpected broker account {name!r}" for name in others]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _show(grants: Sequence[AccountGrant]) -> None:
    for grant in grants:
        print(f"{grant.user} ({grant.service})")
        print(f"  configure {grant.configure}")
        print(f"  write     {grant.write}")
        print(f"  read      {grant.read}")
        for exchange, (write, read) in sorted(grant.topics.items()):
            print(f"  topic {exchange}: write {write} read {read}")


def _management_url(settings: BrokerSettings) -> str:
    if settings.management_url is None:
        raise TrustConfigError("set BATON_MANAGEMENT_URL (http://user:pass@host:15672)")
    return settings.management_url.get_secret_value()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
