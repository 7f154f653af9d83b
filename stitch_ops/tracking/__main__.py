"""``python -m stitch_ops.tracking ui``: the MLflow UI on this project's store.

Starts ``mlflow server`` on ``sqlite:///mlflow.db`` (or ``MLFLOW_TRACKING_URI``) at
127.0.0.1 and prints, per experiment, the link that opens its runs table in the
model-training view; stops on Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from stitch_ops.cli_common import fail, one_line_usage_errors, report_errors

logger = logging.getLogger("stitch_ops.tracking")


PROG = "stitch-ops tracking"


def ui(args: argparse.Namespace) -> int:
    from stitch_ops.tracking.runs import configure
    from stitch_ops.tracking.ui import ServerError, experiment_links, mlflow_server

    if not (Path(args.root) / "mlflow.db").is_file():
        return fail(f"{PROG} ui", f"no MLflow store at {Path(args.root) / 'mlflow.db'}; run the pipeline "
                                  f"first (`dvc repro`) or pass --root")
    uri = configure(Path(args.root))
    try:
        with mlflow_server(uri, port=args.port, timeout_s=args.start_timeout) as base_url:
            links = experiment_links(uri, base_url)
            print(f"MLflow UI: {base_url}/#/?workflowType=machine_learning")
            for name, link in links.items():
                print(f"  {name}: {link}")
            print("Ctrl-C to stop.", flush=True)
            while True:
                time.sleep(3600)
    except ServerError as err:
        return fail(f"{PROG} ui", str(err))
    except KeyboardInterrupt:
        pass  # the server and its workers are stopped on the way out
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    ui_cmd = commands.add_parser("ui", help="serve the MLflow UI on 127.0.0.1 and print the runs-table links")
    ui_cmd.add_argument("--port", type=int, default=5000, help="port (default: %(default)s)")
    ui_cmd.add_argument("--start-timeout", type=float, default=None, metavar="SECONDS",
                        help="give up if the server has not started after this long (default: wait while it runs)")
    ui_cmd.add_argument("--root", type=Path, default=Path("."),
                        help="folder with mlflow.db and mlruns/ (default: the current one)")
    ui_cmd.add_argument("--debug", action="store_true", help="on an error, show the Python traceback")
    return one_line_usage_errors(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return report_errors(f"{PROG} {args.command}", lambda: {"ui": ui}[args.command](args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
