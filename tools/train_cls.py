"""Train an image classifier by transfer learning; every ClassifyConfig field is an option.

    python tools/train_cls.py                                   # ResNet18 on synthetic shapes, no data needed
    python tools/train_cls.py --dataset folder --data-dir flowers --weights imagenet --transfer feature_extract
    python tools/train_cls.py --config my_cls.yaml --set epochs=20 lr=0.01 --amp bf16

Settings come from the defaults, then ``--config`` (YAML, may start from another with ``base:``), then ``--set``,
then the flags given on the command line (shorthands for ``--set``). ``--strategy``, ``--scheduler`` and
``--workers`` are the older names of ``--transfer``, ``--schedule`` and ``--num-workers``.
"""

import argparse
import dataclasses
import sys
import typing

from detlab.classify import ClassifyConfig, load_classify_config, train
from detlab.cli import tool

# older flag -> field
ALIASES = {"strategy": "transfer", "scheduler": "schedule", "workers": "num_workers"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of ClassifyConfig fields")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override fields, e.g. epochs=20 transfer=partial:2")
    hints = typing.get_type_hints(ClassifyConfig)
    aliases = {field: old for old, field in ALIASES.items()}
    for field in dataclasses.fields(ClassifyConfig):
        kind = hints[field.name]
        options = ["--" + field.name.replace("_", "-")]
        if field.name in aliases:
            options.append("--" + aliases[field.name])
        help_text = f"{field.metadata['help']} (default: {field.default})"
        # flags not given stay out of the namespace (SUPPRESS), so they do not hide --config / --set
        if kind is bool:
            parser.add_argument(*options, dest=field.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            # `float | None` fields take a float; null is reachable through --set field=null
            value_type = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
            parser.add_argument(*options, dest=field.name, type=value_type, default=argparse.SUPPRESS,
                                help=help_text)
    return parser


def parse_args(argv=None) -> ClassifyConfig:
    args = vars(build_parser().parse_args(argv))
    config, overrides = args.pop("config"), args.pop("set")
    return load_classify_config(config, overrides, values=args)


@tool
def main(argv=None) -> int:
    report = train(parse_args(argv))
    print(f"val accuracy {report['accuracy']:.4f} (best epoch {report['best_epoch']}, {report['train_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
