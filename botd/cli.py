"""The ``botd`` command.

Subcommands import what they need lazily, so ``botd run`` starts fast and pays for nothing
it does not use. Exit codes (docs/operations.md): 0 clean stop, 69 the server stayed
unavailable for MAX_STARTUP_ATTEMPTS, 70 internal error, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ._version import __version__
from .events import Event
from .exit_codes import ExitCode

__all__ = ["main"]

DESCRIPTION = """\
botd: a worker daemon. Bots register with a main server, heartbeat, claim jobs,
run them and report the results, and never lose a job.

quick start:
  botd demo                     a server and 3 bots in one process, 200 jobs
  botd server --db jobs.db      the reference main server on :3001
  botd run                      one bot against MAIN_SERVER_URL (default http://localhost:3001)
  botd submit --kind k --payload '{"n": 1}' --count 10
  botd submit --kind k --wait   submit one job, wait, print its result
  botd jobs list --status dead  the jobs of a server (also: get, wait, cancel, retry)
  botd status                   the state of a running bot (its ops endpoint)
  botd conformance URL          check that a main server (yours too) keeps protocol v1
"""

EXIT_CODES = """\
exit codes:
  0   stopped cleanly, after the drain: a signal, BOT_ONCE's one job done, or
      BOT_DISCONNECT_AFTER_IDLE seconds without a job
  69  the main server stayed unavailable for MAX_STARTUP_ATTEMPTS registrations
  70  internal error (a bug): the bot released what it could; restart it
  78  bad configuration, unusable state dir, or a token the server rejects: fix it first
"""


def _run_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    from .config import ENV_VARS, flag_arguments, flag_name

    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text
        + "\n\nEvery setting comes from, lowest to highest: its default, the TOML file "
        "(--config, keys are the field names), the environment variable, the flag.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a TOML file of settings, keys are the field names; default none",
    )
    group = parser.add_argument_group("settings (flag / environment variable)")
    for field in ENV_VARS:
        group.add_argument(flag_name(field), dest=f"set_{field}", **flag_arguments(field))
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key[4:]: value
        for key, value in vars(args).items()
        if key.startswith("set_") and value is not None
    }


def _load(args: argparse.Namespace) -> Any:
    """The effective config, or exit 78 with one line per problem."""
    from .config import load_config
    from .errors import ConfigError

    try:
        return load_config(env=os.environ, file=args.config, overrides=_overrides(args))
    except ConfigError as exc:
        flag_token = getattr(args, "set_token", None)
        _config_failed(exc.problems, [str(flag_token)] if flag_token else [])
        raise SystemExit(ExitCode.CONFIG) from None


def _config_failed(problems: Sequence[str], secrets: Sequence[str] = ()) -> None:
    from . import logs

    fmt = os.environ.get("BOT_LOG_FORMAT", "auto").strip().lower()
    setup = logs.setup_logging(
        fmt="json" if fmt == "json" else "text" if fmt == "text" else "auto", secrets=secrets
    )
    for problem in problems:
        logs.emit(Event.CONFIG_ERROR, f"bad configuration: {problem}", "ERROR", problem=problem)
    if fmt == "text" or sys.stderr.isatty():
        # For a person at a terminal. Under a supervisor every captured line stays JSON: the
        # config_error lines above already name each variable and what it accepts. The
        # summary goes through the logs' redaction (the *_TOKEN variables, a --token flag).
        summary = (
            "botd: bad configuration, nothing started:\n"
            + "".join(f"  {p}\n" for p in problems)
            + "Fix the settings above (see `botd run --help`) and start again."
        )
        print(setup.redactor(summary), file=sys.stderr)


def _warn_about_token_sources(args: argparse.Namespace, config: Any, say: Any) -> None:
    """``say`` a warning for a token on the command line and for a token file others may
    read (``botd run`` logs them, ``check-config`` prints them)."""
    from .token_files import loose_permissions, token_flag_warning

    if getattr(args, "set_token", None):
        say(token_flag_warning("--token", "BOT_TOKEN"), "flag", "--token")
    if config.token_file is not None:
        loose = loose_permissions(config.token_file, "BOT_TOKEN_FILE")
        if loose is not None:
            say(loose, "file", str(config.token_file))


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from . import logs
    from .sdnotify import Notifier
    from .wiring import run_agent

    config = _load(args)
    secrets = [config.token.reveal()] if config.token is not None else []
    logs.setup_logging(level=config.log_level, fmt=config.log_format, secrets=secrets)
    for name, near, line in _unknown_variables():
        logs.emit(Event.UNKNOWN_SETTING, line, "WARNING", variable=name, suggestion=near)
    _warn_about_token_sources(
        args,
        config,
        lambda line, key, where: logs.emit(Event.TOKEN_EXPOSED, line, "WARNING", **{key: where}),
    )
    if config.log_level not in ("TRACE", "DEBUG"):
        # httpx logs every request at INFO: one line per heartbeat and claim is noise.
        logging.getLogger("httpx").setLevel(logging.WARNING)

    async def run() -> int:
        notifier = Notifier.from_env()
        try:
            return await run_agent(config, install_signals=True, notifier=notifier)
        finally:
            notifier.close()

    try:
        code: int = trio.run(run)
    except Exception as exc:  # a bug that escaped every guard
        logs.emit(
            Event.INTERNAL_ERROR, f"botd crashed: {type(exc).__name__}: {exc}", "CRITICAL", exc=exc
        )
        return int(ExitCode.SOFTWARE)
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    import json

    from .config import redacted

    config = _load(args)
    for _, _, line in _unknown_variables():
        print(f"botd: warning: {line}", file=sys.stderr)
    _warn_about_token_sources(
        args, config, lambda line, *_: print(f"botd: warning: {line}", file=sys.stderr)
    )
    print(json.dumps(redacted(config), indent=2, sort_keys=True, default=str))
    return int(ExitCode.OK)


def _unknown_variables() -> list[tuple[str, str | None, str]]:
    """(variable, closest setting, warning) for each ``BOT_*`` variable of the environment
    that is no setting: it is ignored, so a typo would otherwise go unnoticed."""
    from .config import unknown_variables

    found = []
    for name, near in unknown_variables(os.environ):
        hint = f"did you mean {near}?" if near else "see `botd run --help` for the settings"
        found.append((name, near, f"{name} is not a setting and is ignored; {hint}"))
    return found


#: The subcommands whose arguments live in other modules: (module, add_arguments, run).
#: They are imported only for the command being run (or for ``botd --help``), so that
#: ``botd run`` never loads the reference server, the status client or the demo.
_LAZY_COMMANDS = {
    "server": (".server.command", "add_server_arguments", "run_server_from_args"),
    "submit": (".submit", "add_submit_arguments", "run_submit_from_args"),
    "jobs": (".jobs_command", "add_jobs_arguments", "run_jobs_from_args"),
    "status": (".status", "add_status_arguments", "run_status_from_args"),
    "demo": (".demo", "add_demo_arguments", "run_demo_from_args"),
    "conformance": (
        ".conformance.command",
        "add_conformance_arguments",
        "run_conformance_from_args",
    ),
}


def _lazy(sub: Any, name: str, wanted: str | None, **parser_kwargs: Any) -> None:
    """Add subcommand ``name``; import its module only when it is the ``wanted`` one."""
    import importlib

    module_name, add_name, run_name = _LAZY_COMMANDS[name]
    if wanted is not None and wanted != name:
        sub.add_parser(name, **parser_kwargs)  # listed, never run: its module stays unloaded
        return
    try:
        module = importlib.import_module(module_name, __package__)
    except ImportError:
        if name == "demo":  # the demo is optional
            return
        raise
    parser = sub.add_parser(name, **parser_kwargs)
    getattr(module, add_name)(parser)
    parser.set_defaults(func=getattr(module, run_name))


def _command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), or None."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg
    return None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``botd`` parser; with ``command``, the other subcommands' modules are not imported."""
    parser = argparse.ArgumentParser(
        prog="botd",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"botd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = _run_parser(sub, "run", "run one bot until a signal stops it")
    run.set_defaults(func=cmd_run)
    check = _run_parser(sub, "check-config", "print the effective config (secrets redacted)")
    check.set_defaults(func=cmd_check_config)
    _lazy(
        sub,
        "server",
        command,
        help="run the reference main server",
        description="The reference main server: protocol v1 over HTTP, SQLite store.",
    )
    _lazy(
        sub,
        "submit",
        command,
        help="submit jobs to a server (--wait: and wait for the result)",
        description="Submit jobs to a main server. The token comes from --token, "
        "--token-file, env BOTD_TOKEN or env BOTD_TOKEN_FILE.",
    )
    _lazy(
        sub,
        "jobs",
        command,
        help="get, wait for, list, cancel and retry a server's jobs",
        description="The jobs of a main server: get, wait, list, cancel, retry. The token "
        "comes from --token, --token-file, env BOTD_TOKEN or env BOTD_TOKEN_FILE.",
    )
    _lazy(
        sub,
        "status",
        command,
        help="show a running bot's state (exit 0 ready, 1 not ready, 2 unreachable)",
        description="Show a running bot's status from its ops endpoint.",
    )
    _lazy(
        sub,
        "demo",
        command,
        help="a server and a fleet of bots in one process, with a live view",
        description="Start the reference server and N bots in one Trio run, submit jobs, "
        "and show them flow (and recover, with --chaos).",
    )
    _lazy(
        sub,
        "conformance",
        command,
        help="check that a main server keeps protocol v1 (exit 0 pass, 1 fail, 2 unreachable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(args_list)
    known = command in ("run", "check-config") or command in _LAZY_COMMANDS
    parser = build_parser(command if known else None)
    args = parser.parse_args(args_list)
    try:
        return int(args.func(args))
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except KeyboardInterrupt:
        return 130


def entry() -> NoReturn:
    """The ``botd`` console script: :func:`main`, then exit with its code.

    The heap is frozen first (:func:`gc.freeze`): the interpreter's last collections would
    otherwise walk every object the run made, a few hundred milliseconds of CPU between the
    last log line and the exit (more on a busy host). A SIGTERM'd idle bot has 2 s to exit.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
