"""What the command-line tools over a store share: the parser, the runner, exit codes and output.

``python -m training.registry`` (model store) and ``python -m training.feedback`` (feedback
store) are built alike: ``store_cli`` makes the parser (``--store`` before or after the
command, from an environment variable, with a default), ``run_cli`` opens the store and
runs the command, turning every store error into one line on stderr and an exit code. An
exit code means the same thing in both CLIs.
"""
import argparse
import datetime
import getpass
import json
import os
import socket
import sys

from service.store import PointerConflict, StoreError, StoreNotFound, StoreUnreachable, open_store

EXIT_OK = 0
EXIT_INVALID = 1       # the store holds something unusable (a LATEST that is not a pointer, an unreadable record)
EXIT_USAGE = 2         # a bad command, flag, store URI or output path
EXIT_NOT_FOUND = 3     # no such version or record
EXIT_UNREACHABLE = 4   # the store cannot be reached (network, credentials, missing bucket or mount)
EXIT_CONFLICT = 5      # another writer moved LATEST first
EXIT_UNVERIFIED = 6    # the version does not verify
EXIT_NO_PREVIOUS = 7   # rollback: LATEST names no previous version
EXIT_AMBIGUOUS = 8     # an id prefix is the start of more than one record's id


class CliError(StoreError):
    """A command cannot do what was asked; ``exit_code`` (EXIT_*) says which kind of failure."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def actor():
    """Who acts (moves LATEST, decides on a record): env DIGITDRAW_ACTOR if set (a RayJob
    names its run, the review page its signed-in reviewer), else user@host."""
    if os.environ.get("DIGITDRAW_ACTOR"):
        return os.environ["DIGITDRAW_ACTOR"]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def now():
    """The current UTC time as ISO 8601 with microseconds and a Z: the stores' timestamps."""
    return f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%S.%fZ}"


def dump(entry):
    """``entry`` as the bytes of one JSON object a store keeps: sorted keys, one line."""
    return (json.dumps(entry, sort_keys=True) + "\n").encode()


def table(rows):
    """``rows`` (the first one the header, if any) as aligned columns, two spaces apart."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(c) for c in column) for column in zip(*cells)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def progress(line):
    """A progress line for a person watching: stderr, so stdout stays the answer."""
    print(line, file=sys.stderr, flush=True)


def whole(low):
    """An argparse type: a whole number >= ``low``."""
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            n = low - 1
        if n < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {low}")
        return n

    return parse


def reason(example):
    """An argparse type: a non-blank reason, stripped; the error shows ``example``."""
    def parse(text):
        if not text.strip():
            raise argparse.ArgumentTypeError(f"say why, e.g. --reason \"{example}\"")
        return text.strip()

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"error: {message}\n")


def store_cli(prog, what, env, default, description, epilog):
    """The top-level parser of a CLI over a store: ``--store`` (before or after the
    command; env ``env``, then ``default``) and ``command(name, fn, text, description=None)``,
    which adds a subcommand that runs ``fn(store, args)`` through ``run_cli``. Returns
    (parser, command)."""
    store_help = f"the {what}: a directory, a PVC mount or gs://bucket/prefix (env {env}; default {default})"
    after = _Parser(add_help=False)  # --store also after the command; the top-level default stands
    after.add_argument("--store", default=argparse.SUPPRESS, help=store_help)
    top = _Parser(prog=prog, description=description, epilog=epilog,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--store", default=os.environ.get(env, "").strip() or default, help=store_help)
    top.set_defaults(store_env=env)  # for run_cli's messages
    commands = top.add_subparsers(dest="name", required=True, metavar="COMMAND")

    def command(name, fn, text, description=None):
        sub = commands.add_parser(name, parents=[after], help=text, description=description or text, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=fn)
        return sub
    return top, command


def fail(message, code):
    """Print ``message`` as one line "error: ..." on stderr and return ``code``."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return code


def run_cli(args, check=None):
    """Open the store ``args.store`` names and return ``args.run(store, args)``'s exit code,
    for arguments parsed by a ``store_cli`` parser. Every store error becomes one line on
    stderr that names the store, and its own exit code. ``check(store)``, if given, runs first."""
    env = args.store_env
    try:
        store = open_store(args.store)
    except ValueError as e:
        return fail(f"{e} (--store or env {env})", EXIT_USAGE)

    def named(e):
        return str(e) if store.uri in str(e) else f"{store.uri}: {e}"

    try:
        if check:
            check(store)
        return args.run(store, args)
    except BrokenPipeError:  # `list | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail too
        return EXIT_OK
    except CliError as e:
        return fail(named(e), e.exit_code)
    except StoreNotFound as e:  # deleted between listing and reading
        return fail(f"{named(e)}; run list to see what the store holds", EXIT_NOT_FOUND)
    except StoreUnreachable as e:
        return fail(f"{named(e)}; check the store URI (--store or env {env}), the network and the credentials",
                    EXIT_UNREACHABLE)
    except PointerConflict:
        return fail(f"{store.uri}: another writer moved LATEST; run history and try again", EXIT_CONFLICT)
    except StoreError as e:
        return fail(named(e), EXIT_INVALID)
