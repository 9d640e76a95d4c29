"""`reporting-server run` (not yet built)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("run", help="(not yet built)")
    parser.set_defaults(func=lambda args: parser.error("not yet built"))
