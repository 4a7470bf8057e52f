"""python -m detlab.ops --info | --build: show the active backend, or compile the native ops
ahead of time (both compile on first use if needed)."""

import argparse
import sys

from . import _build, backend


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m detlab.ops", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--info", action="store_true", help="print which implementation detlab.ops uses")
    group.add_argument("--build", action="store_true", help="compile the native library now and print its path")
    args = parser.parse_args(argv)
    try:
        if args.build:
            print(_build.build(_build.build_config()))
        else:
            print(backend())
    except _build.NativeOpsBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
