"""Train an image classifier by transfer learning; every ClassifyConfig field is an option.

    python tools/train_cls.py                                   # ResNet18 on synthetic shapes, no data needed
    python tools/train_cls.py --dataset folder --data-dir flowers --weights imagenet --strategy feature_extract
"""

import argparse
import sys
import dataclasses
import typing

from detlab.classify import ClassifyConfig, train


def parse_args(argv=None) -> ClassifyConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(ClassifyConfig)
    for field in dataclasses.fields(ClassifyConfig):
        kind = hints[field.name]
        option = "--" + field.name.replace("_", "-")
        help_text = f"{field.metadata['help']} (default: {field.default})"
        if kind is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        else:
            # `float | None` fields take a float; None stays reachable as the default only
            value_type = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            parser.add_argument(option, type=value_type, default=field.default, help=help_text)
    return ClassifyConfig(**vars(parser.parse_args(argv)))


def main(argv=None) -> None:
    report = train(parse_args(argv))
    print(f"val accuracy {report['accuracy']:.4f} (best epoch {report['best_epoch']}, {report['train_seconds']} s)")


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # bad input: one clear line, no traceback
        sys.exit(f"error: {error}")
