"""``rrt-assets fetch <model name>|corpus``: build a cached asset (once) and print where it is."""

from __future__ import annotations

import argparse

from rrt.assets import MODELS, ensure_model
from rrt.cli.errors import one_line_errors
from rrt.data.corpus import build_local_corpus


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rrt-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="build (once) and print the location of a model or the local corpus")
    fetch.add_argument("asset", choices=[*MODELS, "corpus"])
    args = parser.parse_args(argv)
    if args.asset == "corpus":
        paths = build_local_corpus()
        print(f"train:    {paths.train}\nheldout:  {paths.heldout}\nmanifest: {paths.manifest}")
    else:
        print(ensure_model(args.asset))


if __name__ == "__main__":
    main()
