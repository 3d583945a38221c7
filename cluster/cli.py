"""The `vid2vid` command line. Each subcommand imports its heavy dependencies only when it runs."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable, Sequence

from dataio.errors import UserInputError
from trainer.config import TrackingConfig
from trainer.config_tree import ConfigError

DEFAULT_TRACKING_URI = TrackingConfig.uri
"""The tracking store commands use without a config: the trainer's default (``tracking.uri``)."""


def _add_config_args(parser: argparse.ArgumentParser, required: bool = False, required_flag: bool = False) -> None:
    if required:
        parser.add_argument("config", help="YAML config file (see configs/)")
    else:
        parser.add_argument("--config", default=None, required=required_flag,
                            help="YAML config file" + ("" if required_flag else " (default: built-in defaults)"))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="dotted overrides, e.g. data.clip_frames=8")


def _add_address_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="the cluster's job API, http://HEAD:8265 (default: $RAY_API_SERVER_ADDRESS, "
                             "an http $RAY_ADDRESS, else http://127.0.0.1:8265)")


def _add_tracking_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})")


def _config(args: argparse.Namespace):
    from cluster.config import load
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
    report = pack(_config(args).data)
    print(report.summary())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from cluster.inspect import inspect_batch
    cfg = _config(args)
    print(inspect_batch(cfg.data, args.split, args.height, args.width, args.frames))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cluster.launch import train
    overrides = list(args.overrides) + ([f"cluster.address={args.address}"] if args.address else [])
    from cluster.config import load
    cfg = load(args.config, overrides)  # refused here, before Ray or any worker starts
    result = train(cfg)
    print(f"run '{cfg.cluster.name}' done: epoch {result.metrics.get('epoch')}, step {result.metrics.get('step')}")
    from trainer.tracking import redact
    print(f"  mlflow run:  {result.run_id or '-'} ({redact('uri', cfg.tracking.uri)})")
    print(f"  checkpoint:  {result.checkpoint or '-'}")
    print(f"  generator:   {result.export or '(on the cluster; publish with: vid2vid model publish --run RUN_ID)'}")
    print(f"  logs:        {result.checkpoint_dir / 'logs'} (Ray, DeepSpeed and every worker)")
    return 0


def _tracking_uri(args: argparse.Namespace) -> str:
    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def cmd_model_publish(args: argparse.Namespace) -> int:
    from cluster.registry import publish
    done = publish(_tracking_uri(args), args.name, args.alias, run_id=args.run, checkpoint=args.checkpoint,
                   best=args.best or "")
    print(f"published {done.name} version {done.version} (run {done.run_id})"
          + (f" as {done.uri}" if done.alias else ""))
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from cluster.registry import format_models, list_models
    print(format_models(list_models(_tracking_uri(args))))
    return 0


def cmd_model_fetch(args: argparse.Namespace) -> int:
    from cluster.registry import fetch
    got = fetch(_tracking_uri(args), args.uri, args.dest)
    print(f"{args.uri} (version {got.version}, run {got.run_id or '-'}):")
    print(f"  model:   {got.model}")
    print(f"  samples: {len(got.samples)} video(s)" + "".join(f"\n    {p}" for p in got.samples))
    print(f"  config:  {got.config or '-'}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from cluster.generate import LabelInputError, generate
    os.environ["MLFLOW_TRACKING_URI"] = _tracking_uri(args)  # where models:/ URIs resolve
    size = None
    if args.height is not None or args.width is not None:
        if args.height is None or args.width is None:
            raise LabelInputError("--height and --width go together")
        size = (args.height, args.width)  # generate() refuses what the model cannot take
    out = generate(args.model, args.labels, args.out, side_by_side=args.side_by_side, size=size, key=args.key,
                   fps=args.fps, device=args.device)
    print(f"wrote {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cluster.evaluate import run_eval
    cfg = _config(args)
    os.environ["MLFLOW_TRACKING_URI"] = _tracking_uri(args)  # where models:/ URIs resolve
    result = run_eval(cfg, args.model, args.out, video=args.video, run_id=args.run,
                      tracking_uri=_tracking_uri(args))
    print(result.summary)
    print(f"wrote {result.report_path} and {result.video_path}"
          + (f"; logged to MLflow run {result.run_id}" if result.run_id else ""))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster import jobs
    spec = jobs.read_manifest(args.manifest)
    job_id = jobs.submit(spec, args.overrides, args.address)
    print(f"submitted {job_id} to {jobs.job_address(args.address)}: {jobs.with_overrides(spec.entrypoint, args.overrides)}")
    if not args.wait:
        print(f"follow it with: vid2vid jobs logs {job_id} --follow")
        return 0
    state = jobs.wait(job_id, args.address)
    if state.status == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED")
        return 0
    print(jobs.failure_summary(state, jobs.logs(job_id, args.address)), file=sys.stderr)
    return 1


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from cluster import jobs
    print(jobs.format_jobs(jobs.list_jobs(args.address)))
    return 0


def cmd_jobs_status(args: argparse.Namespace) -> int:
    from cluster import jobs
    state = jobs.status(args.job_id, args.address)
    print(f"{state.job_id}: {state.status}" + (f" ({state.message.strip()})" if state.message.strip() else ""))
    if state.status == "FAILED":
        print(jobs.failure_summary(state, jobs.logs(args.job_id, args.address)), file=sys.stderr)
    return 0


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    from cluster import jobs
    if args.follow:
        jobs.follow(args.job_id, args.address)
    else:
        print(jobs.logs(args.job_id, args.address), end="")
    return 0


def cmd_jobs_stop(args: argparse.Namespace) -> int:
    from cluster import jobs
    state = jobs.stop(args.job_id, args.address)
    print(f"{state.job_id}: {state.status}")
    return 0 if state.status in jobs.TERMINAL else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from cluster.sweep import format_table, sweep
    overrides = list(args.overrides) + ([f"cluster.address={args.address}"] if args.address else [])
    from cluster.config import load
    cfg = load(args.config, overrides)
    metric = cfg.sweep.metric
    result = sweep(cfg, say=lambda line: print(line, flush=True))
    print(format_table(result.rows, metric, cfg.sweep.mode, result.best))
    print(result.rule)
    if result.interrupted:
        print(f"sweep interrupted: the trials above are as they were left ({result.planned - len(result.rows)} of "
              f"{result.planned} never created); nothing published", file=sys.stderr)
        return 130
    if result.best is None:
        print("no trial finished with a finite metric: nothing published", file=sys.stderr)
        return 1
    print(f"best: {result.best.trial} ({metric} {result.best.best:.4g} at step {result.best.best_step}), "
          f"MLflow run {result.best.run_id} under sweep run {result.parent_run_id or '-'}")
    if result.worst is not None and result.worst is not result.best:
        print(f"worst: {result.worst.trial} ({metric} {result.worst.best:.4g}): best - worst = "
              f"{result.best.best - result.worst.best:+.4g}")
    if result.published is not None:
        print(f"published {result.published.uri} (version {result.published.version})")
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

    pack = data.add_parser("pack", help="pack sequences (data.pack.source) into WebDataset shards (data.shards: "
                                        "a folder or s3://); data.pack.skip_bad=true skips bad sequences")
    _add_config_args(pack)
    pack.set_defaults(func=cmd_data_pack)

    inspect = data.add_parser("inspect", help="read one batch through the DALI loader and summarise it")
    _add_config_args(inspect)
    inspect.add_argument("--split", default="train")
    inspect.add_argument("--height", type=int, default=None, help="output height (default: packed size)")
    inspect.add_argument("--width", type=int, default=None, help="output width (default: packed size)")
    inspect.add_argument("--frames", type=int, default=None, help="frames per clip (default: clip_frames)")
    inspect.set_defaults(func=cmd_data_inspect)

    train = commands.add_parser("train", help="train through Ray Train (embedded local Ray, or a cluster)")
    _add_config_args(train, required_flag=True)
    train.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    train.set_defaults(func=cmd_train)

    sweep = commands.add_parser("sweep", help="Ray Tune search over config keys (ASHA), best generator published")
    _add_config_args(sweep, required_flag=True)
    sweep.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded Ray)")
    sweep.set_defaults(func=cmd_sweep)

    submit = commands.add_parser("submit", help="submit ray_job.yaml's entrypoint and runtime env to a Ray cluster")
    submit.add_argument("manifest", help="a KubeRay RayJob manifest (ray_job.yaml)")
    submit.add_argument("overrides", nargs="*", metavar="key.sub=value", help="appended to the entrypoint")
    _add_address_arg(submit)
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it SUCCEEDED")
    submit.set_defaults(func=cmd_submit)

    jobs = commands.add_parser("jobs", help="jobs on a Ray cluster: list, status, logs, stop").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    jobs_list = jobs.add_parser("list", help="the cluster's jobs, newest first")
    _add_address_arg(jobs_list)
    jobs_list.set_defaults(func=cmd_jobs_list)
    for action, helptext, func in (("status", "a job's status (and why it failed)", cmd_jobs_status),
                                   ("logs", "a job's logs", cmd_jobs_logs),
                                   ("stop", "stop a job and wait until it has stopped", cmd_jobs_stop)):
        sub = jobs.add_parser(action, help=helptext)
        sub.add_argument("job_id", help="submission id (vid2vid jobs list)")
        _add_address_arg(sub)
        if action == "logs":
            sub.add_argument("--follow", action="store_true", help="keep printing until the job ends")
        sub.set_defaults(func=func)

    model = commands.add_parser("model", help="the model registry: publish, list, fetch").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    publish = model.add_parser("publish", help="register a trained generator as an MLflow model and alias it")
    source = publish.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="MLflow run id of a `vid2vid train` run")
    source.add_argument("--checkpoint", help="an exported generator.pt, a run's checkpoint folder or one step-* folder")
    publish.add_argument("--best", metavar="METRIC",
                         help="publish the kept checkpoint with the best recorded held-out score (eval/psnr, "
                              "eval/ssim, eval/warp_error, eval/warp_ratio; trained with eval.at_checkpoint) "
                              "instead of the last")
    publish.add_argument("--name", required=True, help="registered model name")
    publish.add_argument("--alias", default="champion", help="alias to point at the new version ('' for none)")
    _add_tracking_arg(publish)
    publish.set_defaults(func=cmd_model_publish)
    listing = model.add_parser("list", help="registered models, versions and aliases")
    _add_tracking_arg(listing)
    listing.set_defaults(func=cmd_model_list)
    fetch = model.add_parser("fetch", help="download a model with its run's sample videos and config")
    fetch.add_argument("uri", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    fetch.add_argument("--dest", required=True, help="folder to write model/, samples/ and config.yaml into")
    _add_tracking_arg(fetch)
    fetch.set_defaults(func=cmd_model_fetch)

    gen = commands.add_parser("generate", help="generate a video from label maps with a registered model")
    gen.add_argument("--model", required=True,
                     help="models:/NAME@ALIAS (any MLflow model URI), or a checkpoint: an exported "
                          "generator.pt, a run's checkpoint folder or one step-* folder")
    gen.add_argument("--labels", required=True,
                     help="a folder of PNG label maps (or a sequence folder), a label video, or a shard .tar")
    gen.add_argument("--out", required=True, help="output .mp4")
    gen.add_argument("--side-by-side", action="store_true", help="write labels | generated")
    gen.add_argument("--key", help="sample key inside a shard (default: its first clip)")
    gen.add_argument("--height", type=int, help="resize the labels to this height (with --width)")
    gen.add_argument("--width", type=int)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1 ...")
    _add_tracking_arg(gen)
    gen.set_defaults(func=cmd_generate)

    evaluate = commands.add_parser("eval", help="score a generator on a shard set (data.shards; eval.split, "
                                                "eval.frames, eval.max_clips, eval.device): PSNR, SSIM, "
                                                "warping error, FID/FVD; JSON report + worst/best video")
    evaluate.add_argument("--model", required=True,
                          help="models:/NAME@ALIAS (any MLflow model URI), or a checkpoint: an exported "
                               "generator.pt, a run's checkpoint folder or one step-* folder")
    evaluate.add_argument("--out", default="eval/report.json", help="JSON report (default: eval/report.json)")
    evaluate.add_argument("--video", help="worst (top) / best (bottom) side-by-side mp4 (default: beside --out)")
    evaluate.add_argument("--run", help="MLflow run id to log the metrics, report and video to")
    _add_tracking_arg(evaluate)
    _add_config_args(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    demo = commands.add_parser("demo", help="the main job on one machine (see README)")
    _add_config_args(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may follow options (`submit job.yaml --wait key=value`), which argparse alone refuses
    # once the positional list was consumed: take leftover key=value words as overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], int] = args.func
    _show_our_warnings()
    try:
        return func(args)
    except ConfigError as err:
        print(f"vid2vid: config error: {err}", file=sys.stderr)
        return 2
    except (UserInputError, FileNotFoundError) as err:
        print(f"vid2vid: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as stopped:  # Ctrl-C; a training run's says how to resume it
        print(f"vid2vid: {stopped or 'interrupted'}", file=sys.stderr)
        return 130


def _show_our_warnings() -> None:
    """Our packages' warnings on stderr, whatever a library does to the root logger (loading an
    MLflow PyTorch model leaves it at ERROR)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vid2vid: warning: %(message)s"))
    for package in ("cluster", "trainer", "dataio", "models"):
        logger = logging.getLogger(package)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
