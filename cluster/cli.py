"""The `vid2vid` command line. Each subcommand imports its heavy dependencies only when it runs."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from trainer.config_tree import ConfigError


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False) -> None:
    if required:
        parser.add_argument("config", help="YAML config file (see configs/)")
    else:
        parser.add_argument("--config", default=None, help="YAML config file (default: built-in defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, e.g. data.clip_frames=8")


def _config(args: argparse.Namespace):
    from trainer.config import load
    return load(args.config, args.overrides)


def cmd_config_show(args: argparse.Namespace) -> int:
    from trainer.config_tree import to_yaml
    print(to_yaml(_config(args)), end="")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from dataio.synth import generate
    cfg = _config(args)
    paths = generate(cfg.data.synth)
    print(f"wrote {len(paths)} sequences to {cfg.data.synth.out}")
    return 0


def cmd_data_pack(args: argparse.Namespace) -> int:
    from dataio.pack import pack
    overrides = list(args.overrides)
    if args.source:
        overrides.append(f"data.pack.source={args.source}")
    if args.dest:
        overrides.append(f"data.shards={args.dest}")
    if args.skip_bad:
        overrides.append("data.pack.skip_bad=true")
    from trainer.config import load
    cfg = load(args.config, overrides)
    report = pack(cfg.data)
    print(report.summary())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from cluster.inspect import inspect_batch
    cfg = _config(args)
    print(inspect_batch(cfg.data, args.split, args.height, args.width, args.frames))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cluster.demo import run_demo
    return run_demo(_config(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vid2vid", description=__doc__.split("\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    config = commands.add_parser("config", help="show the resolved config").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    show = config.add_parser("show", help="print the resolved config: file + overrides, validated")
    _add_config_args(show, required=True)
    show.set_defaults(func=cmd_config_show)

    data = commands.add_parser("data", help="make, pack and inspect datasets").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    synth = data.add_parser("synth", help="write a synthetic paired label/RGB dataset (data.synth.*)")
    _add_config_args(synth)
    synth.set_defaults(func=cmd_data_synth)

    pack = data.add_parser("pack", help="pack sequences into WebDataset shards (local folder or s3://)")
    _add_config_args(pack)
    pack.add_argument("--source", help="input folder of sequences (data.pack.source)")
    pack.add_argument("--dest", help="shard destination, a folder or s3://bucket/prefix (data.shards)")
    pack.add_argument("--skip-bad", action="store_true",
                      help="skip bad sequences and list them in the report instead of stopping")
    pack.set_defaults(func=cmd_data_pack)

    inspect = data.add_parser("inspect", help="read one batch through the DALI loader and summarise it")
    _add_config_args(inspect)
    inspect.add_argument("--split", default="train")
    inspect.add_argument("--height", type=int, default=None, help="output height (default: packed size)")
    inspect.add_argument("--width", type=int, default=None, help="output width (default: packed size)")
    inspect.add_argument("--frames", type=int, default=None, help="frames per clip (default: clip_frames)")
    inspect.set_defaults(func=cmd_data_inspect)

    demo = commands.add_parser("demo", help="the main job on one machine (see README)")
    _add_config_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as err:
        print(f"vid2vid: config error: {err}", file=sys.stderr)
        return 2
    except _user_errors() as err:
        print(f"vid2vid: {err}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by bad input, reported in one line rather than a traceback."""
    errors: list[type[BaseException]] = [FileNotFoundError]
    for module, name in (("dataio.pack", "BadInputError"), ("dataio.pack", "SettingsMismatchError"),
                         ("dataio.video", "VideoError"), ("dataio.loader", "DataError")):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            errors.append(getattr(mod, name))
    return tuple(errors)


if __name__ == "__main__":
    sys.exit(main())
