"""python -m training.review: the review page, a web server of its own over a feedback store.

Reviewers look at the corrections people sent, the most suspicious first, and approve or
reject them; every decision is written with the same create-only markers as `python -m
training.feedback approve/reject`. The store is a directory, a PVC mount or
gs://bucket/prefix (--store, else env FEEDBACK_URI, else ./feedback-store).

Locally (--auth link, the default) it listens on 127.0.0.1 and prints a one-time sign-in
link: open it once and the browser holds a session (the link is then spent, and a fresh one
is printed for another browser). Decisions are recorded as DIGITDRAW_ACTOR, else user@host.
On GKE (--auth iap) it sits behind Identity-Aware Proxy: every request's IAP assertion is
verified and its email must be one of --reviewers; docs/gke.md sets it up.
"""
import argparse
import os
import sys

from service import contract

# (flag, env var, default, type, help). The defaults here are the documented ones.
FLAGS = [
    ("--store", "FEEDBACK_URI", contract.DEFAULT_FEEDBACK_URI, str,
     "the feedback store: a directory, a PVC mount or gs://bucket/prefix"),
    ("--host", "REVIEW_HOST", "127.0.0.1", str, "address to listen on (0.0.0.0 in a pod)"),
    ("--port", "REVIEW_PORT", 8090, int, "TCP port to listen on"),
    ("--auth", "REVIEW_AUTH", "link", str,
     "link: print a one-time sign-in link (local use); iap: verify Identity-Aware Proxy's signed header"),
    ("--reviewers", "REVIEWERS", "", str, "--auth iap: comma-separated emails of the people who may review"),
    ("--iap-audience", "REVIEW_IAP_AUDIENCE", "", str,
     "--auth iap: the audience IAP signs for, /projects/NUMBER/global/backendServices/ID "
     "(infra/deploy-review.sh --expose sets it); empty: every request is refused"),
    ("--iap-keys-url", "REVIEW_IAP_KEYS_URL", "https://www.gstatic.com/iap/verify/public_key", str,
     "--auth iap: where IAP's public keys are fetched from"),
    ("--session-seconds", "REVIEW_SESSION_SECONDS", 8 * 3600, int, "--auth link: how long a session lasts"),
    ("--link-seconds", "REVIEW_LINK_SECONDS", 15 * 60, int, "--auth link: how long a sign-in link stays valid"),
    ("--refresh-seconds", "REVIEW_REFRESH_SECONDS", 10, int,
     "the queue lists the store again (and reads only new records) when it is older than this"),
    ("--log-level", "LOG_LEVEL", "info", str, "debug, info, warning or error"),
]


def _positive(kind, minimum):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value
    return parse


MINIMUMS = {"--port": 0, "--session-seconds": 1, "--link-seconds": 1, "--refresh-seconds": 0}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m training.review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, env, default, kind, text in FLAGS:
        kind = _positive(kind, MINIMUMS[flag]) if flag in MINIMUMS else kind
        # argparse parses a string default like the flag: a bad environment value gets the flag's error.
        value = os.environ.get(env, "").strip()
        parser.add_argument(flag, type=kind, default=value or default,
                            help=f"{text} (env {env}; default {default if default != '' else 'none'})")
    args = parser.parse_args(argv)
    if args.auth not in ("link", "iap"):
        parser.error(f"--auth {args.auth!r}: use link or iap")
    if args.auth == "iap" and not args.reviewers.strip():
        parser.error("--auth iap needs --reviewers (env REVIEWERS): the emails of the people who may review")
    return args


def main(argv=None):
    args = parse_args(argv)
    from training.review.server import serve  # after --help: the server's imports are not needed for it

    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
