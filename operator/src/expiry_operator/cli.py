"""``expiry-operator``: ``run`` serves the webhook; ``inject`` previews an injection offline."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from expiry_operator.cluster import parse_version, supports_native_sidecars
from expiry_operator.logs import LOG_LEVELS
from expiry_operator.preview import ManifestError, WouldDeny, inject_documents, load_documents, render
from expiry_operator.settings import DEFAULT_CONFIG_PATH, ConfigError, load_settings

EXIT_BAD_INPUT = 2
"""A flag, the manifest or the config file is refused: one line on stderr naming the problem."""
EXIT_DENIED = 2
"""Admission would deny a pod of the manifest: one line on stderr, the denial's reason."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from expiry_operator.runner import run  # kopf and its dependencies only when serving

            return run(
                load_settings(args.config),
                self_signed=args.self_signed,
                log_format=args.log_format,
                log_level=args.log_level,
            )
        return _inject(args)
    except ConfigError as e:
        _say(str(e))
        return EXIT_BAD_INPUT


def _inject(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    try:
        data = sys.stdin.buffer.read() if args.filename == "-" else Path(args.filename).read_bytes()
        documents = load_documents(data)
        injected = inject_documents(
            documents,
            settings.sidecar,
            native_sidecars_supported=supports_native_sidecars(args.kubernetes_version),
        )
    except OSError as e:
        _say(f"cannot read {args.filename}: {e.strerror or e}")
        return EXIT_BAD_INPUT
    except ManifestError as e:
        _say(f"{args.filename}: {e}")
        return EXIT_BAD_INPUT
    except WouldDeny as e:
        _say(f"admission would deny {e}")
        return EXIT_DENIED
    sys.stdout.write(render(injected, args.output))
    return 0


def _say(message: str) -> None:
    """One line on stderr, whatever the manifest's names hold (a newline in a pod's name, ...)."""
    print("expiry-operator:", " ".join(message.split()), file=sys.stderr)


def _version(text: str) -> tuple[int, int]:
    try:
        return parse_version(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _Parser(argparse.ArgumentParser):
    """argparse, but a refused flag is one line (``PROG: error: ...``, no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_BAD_INPUT, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n"
        )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="expiry-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="serve the mutating admission webhook (kopf)")
    run.add_argument(
        "--config",
        help=f"operator config file (YAML; the chart mounts it at {DEFAULT_CONFIG_PATH}; default: built-in)",
    )
    run.add_argument(
        "--self-signed",
        action="store_true",
        help="local development: serve a generated self-signed certificate instead of the configured files",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="json: one object per line, as the sidecar logs (default); text: for a terminal",
    )
    run.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="info",
        help="the least severe lines logged, kopf's included (default: info)",
    )

    inject = commands.add_parser("inject", help="print what admission would make of a manifest")
    inject.add_argument(
        "-f", "--filename", required=True, help="manifest file (YAML or JSON, multi-document; - = stdin)"
    )
    inject.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    inject.add_argument("--config", help="operator config file (YAML) whose sidecar settings to use")
    inject.add_argument(
        "--kubernetes-version",
        type=_version,
        default="1.29",
        metavar="X.Y",
        help="target cluster version, for nativeSidecar: auto (native sidecars from 1.29; default 1.29)",
    )
    return parser
