"""Entry point: ``torchrun --nproc_per_node N -m trainer --config configs/x.yaml [key=value ...]``.

Also runs as one process without a launcher (``python -m trainer ...``). Ray Train calls
``trainer.loop.train(cfg)`` directly.
"""
from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config file (defaults when omitted)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=2")
    args = parser.parse_args(argv)

    from trainer.config import load
    from trainer.config_tree import ConfigError

    try:
        cfg = load(args.config, args.overrides)  # refuse a bad config before anything heavy starts
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from trainer import distributed as dist

    dist.setup_process(dist.rank())
    from trainer.loop import failure_logged, train

    try:
        result = train(cfg)
    except Exception as err:
        if not failure_logged(err):  # train() logs what fails inside the run, with the traceback
            logging.getLogger("trainer").exception("training failed")
        dist.exit_process(1)
    if dist.is_main():
        print(f"done: epochs={result.progress.epoch} steps={result.progress.step} "
              f"skipped={result.progress.skipped} checkpoint={result.checkpoint} export={result.export}",
              flush=True)
    dist.exit_process(0)  # barrier + os._exit: gloo can abort at interpreter exit (docs/platform.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
