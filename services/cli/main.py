"""`torl` command line: serve a service, show its effective config, print the version.

Heavy stacks (torch, vllm, deepspeed) are imported only inside the commands that need them, and
only after the config validated, so `torl --help` and a config typo answer in well under a second.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from torl.common.config import ServiceSettings

app = typer.Typer(
    name="torl",
    help="Tool-integrated RL (ToRL): rollout, executor, reward and learner services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# service -> (settings class, async serve function), as "module:attr" so nothing loads early.
SERVICES: dict[str, tuple[str, str]] = {
    "executor": ("torl.executor.config:ExecutorSettings", "torl.executor.server:serve"),
    "reward": ("torl.reward.config:RewardSettings", "torl.reward.server:serve"),
    "rollout": ("torl.rollout.config:RolloutSettings", "torl.rollout.server:serve"),
    "learner": ("torl.learner.config:LearnerSettings", "torl.learner.server:serve"),
}

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (one service, or sections per service).")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Override a field: --set grpc.port=50061 (repeatable).")
]
HostOpt = Annotated[str | None, typer.Option("--host", help="gRPC bind address.")]
PortOpt = Annotated[int | None, typer.Option("--port", help="gRPC port (0 = pick a free one).")]
MetricsPortOpt = Annotated[int | None, typer.Option("--metrics-port", help="Prometheus port (0 = off).")]
LogLevelOpt = Annotated[str | None, typer.Option("--log-level", help="debug | info | warning | error.")]


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def settings_class(service: str) -> type[ServiceSettings]:
    from torl.common.config import ConfigError

    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    cls: type[ServiceSettings] = _load(SERVICES[service][0])
    return cls


def build_settings(
    service: str,
    config: Path | None,
    sets: list[str] | None,
    host: str | None = None,
    port: int | None = None,
    metrics_port: int | None = None,
    log_level: str | None = None,
) -> ServiceSettings:
    """Validated settings for `service`: flags > env > config file > defaults."""
    from torl.common.config import load_settings, parse_set_options

    overrides = parse_set_options(sets or [])
    if host is not None:
        overrides.setdefault("grpc", {})["host"] = host
    if port is not None:
        overrides.setdefault("grpc", {})["port"] = port
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if log_level is not None:
        overrides["log_level"] = log_level
    return load_settings(settings_class(service), config_file=config, overrides=overrides)


def _make_service_app(service: str) -> typer.Typer:
    sub = typer.Typer(help=f"The {service} service.", no_args_is_help=True)

    @sub.command("serve", help=f"Run the {service} service until SIGTERM.")
    def serve(
        config: ConfigOpt = None,
        sets: SetOpt = None,
        host: HostOpt = None,
        port: PortOpt = None,
        metrics_port: MetricsPortOpt = None,
        log_level: LogLevelOpt = None,
    ) -> None:
        settings = build_settings(service, config, sets, host, port, metrics_port, log_level)
        from torl.common.tls import check_settings_files

        check_settings_files(settings, f"{service}.")  # missing/bad TLS files fail before slow start-up
        serve_fn = _load(SERVICES[service][1])
        import asyncio

        asyncio.run(serve_fn(settings))

    return sub


for _name in SERVICES:
    app.add_typer(_make_service_app(_name), name=_name)


@config_app.command("show", help="Print the effective, validated config of a service as JSON.")
def config_show(
    service: Annotated[str, typer.Argument(help="executor | reward | rollout | learner")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    settings = build_settings(service, config, sets)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2, sort_keys=True))


PrometheusOpt = Annotated[
    bool, typer.Option("--prometheus", help="Also start a local Prometheus (scrapes every service, loads the alerts).")
]


@app.command("up", help="Run every service locally on loopback ports until Ctrl-C.")
def up(
    run_dir: Annotated[Path, typer.Option(help="Where logs and state go.")] = Path("runs/up"),
    check: Annotated[bool, typer.Option("--check", help="Start, print health, stop.")] = False,
    config: ConfigOpt = None,
    prometheus: PrometheusOpt = False,
) -> None:
    from torl.cli.up import run_up

    raise typer.Exit(run_up(run_dir, check, config=config, prometheus=prometheus))


@app.command("eval", help="Evaluate a model with the TIR loop on benchmarks (paper layout table).")
def eval_cmd(
    model: Annotated[str, typer.Option("--model", help="Model directory (served by a local rollout).")] = "",
    datasets: Annotated[str, typer.Option(help="Comma-separated benchmark names, .jsonl/.parquet paths, arith.")] = (
        "aime24,aime25,math500,amc23,olympiadbench"
    ),
    k: Annotated[int, typer.Option("--k", min=1, max=1024, help="Samples per problem (avg@k, pass@k).")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 = greedy.")] = 0.0,
    max_tool_calls: Annotated[int, typer.Option(min=0, max=64, help="Tool-call budget C.")] = 1,
    max_tokens: Annotated[int, typer.Option(min=0, help="Response token budget (0 = rollout config).")] = 0,
    limit: Annotated[int, typer.Option(min=0, help="First N problems per dataset (0 = all).")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, max=4096, help="Problems in flight.")] = 16,
    seed: Annotated[int, typer.Option(min=0, help="Sampling seed.")] = 0,
    max_prompt_tokens: Annotated[
        int, typer.Option(min=1, help="Prompt budget of a locally started rollout; longer prompts are refused.")
    ] = 1024,
    out: Annotated[Path, typer.Option(help="Output directory.")] = Path("runs/eval"),
    data_dir: Annotated[Path | None, typer.Option(help="Data directory (default: the shipped data/).")] = None,
    rollout: Annotated[str | None, typer.Option(help="Use a running rollout at HOST:PORT.")] = None,
    executor: Annotated[str | None, typer.Option(help="Use a running executor at HOST:PORT.")] = None,
    tls_ca: Annotated[str, typer.Option(help="With --rollout: call it over TLS, verified against this CA (PEM).")] = "",
    tls_cert: Annotated[str, typer.Option(help="With --rollout: client certificate for mTLS (PEM).")] = "",
    tls_key: Annotated[str, typer.Option(help="With --rollout: private key of --tls-cert (PEM).")] = "",
    tls_server_name: Annotated[str, typer.Option(help="With --rollout: name expected in its certificate.")] = "",
) -> None:
    from torl.evaluation.cli import run_eval
    from torl.evaluation.runner import EvalOptions

    if not model and not rollout:
        raise typer.BadParameter("give --model DIR or --rollout HOST:PORT")
    from torl.common.datasets import DatasetError

    tls = None
    if tls_ca or tls_cert or tls_key or tls_server_name:
        if not rollout:
            raise typer.BadParameter("--tls-* options apply to a running rollout: give --rollout HOST:PORT")
        from pydantic import ValidationError

        from torl.common.config import ConfigError, TlsClientSettings
        from torl.common.tls import channel_credentials

        try:
            tls = TlsClientSettings(enabled=True, ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key,
                                    server_name_override=tls_server_name)
            channel_credentials(tls, "--tls")  # unreadable or non-PEM files fail here, by name
        except ValidationError as e:
            raise typer.BadParameter(e.errors()[0]["msg"]) from None
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None
    opts = EvalOptions(k, temperature, max_tool_calls, max_tokens, seed, concurrency, max_prompt_tokens, tls=tls)
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    try:
        table = run_eval(model, names, opts, out, limit, data_dir, rollout, executor)
    except DatasetError as e:
        typer.echo(f"dataset error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(table)


model_app = typer.Typer(help="Model kits: build the tiny model for CPU runs and tests.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("build-tiny", help="Build (or reuse from cache) the tiny Qwen2 model; prints its directory.")
def model_build_tiny(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Target directory (default: the cache).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of tokenizer corpus, init and training.")] = 0,
    train_steps: Annotated[
        int | None, typer.Option("--train-steps", min=0, help="Training steps (0: random weights).")
    ] = None,
) -> None:
    from torl.rollout.tiny_model import TinyModelSpec, build_tiny

    spec = TinyModelSpec(seed=seed) if train_steps is None else TinyModelSpec(seed=seed, train_steps=train_steps)
    typer.echo(str(build_tiny(out_dir, seed, spec)))


@app.command(
    "grade",
    help='Grade JSONL {"prediction", "reference"} lines from stdin; print {"correct", "reward", "reason"} per line.',
)
def grade(
    mode: Annotated[str, typer.Option(help="eval (boxed, then fallbacks) | training (last boxed only).")] = "eval",
    workers: Annotated[int | None, typer.Option(help="Verifier worker processes.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    from torl.common.config import ConfigError

    if mode not in ("eval", "training"):
        raise ConfigError(f"config error: --mode must be eval or training, got {mode!r}")
    all_sets = [*(sets or []), *([f"grader.workers={workers}"] if workers is not None else [])]
    settings = build_settings("reward", config, all_sets)
    from torl.reward.grade_cli import run_grade
    from torl.reward.grader import Mode

    errors = run_grade(sys.stdin, sys.stdout, settings.grader, Mode(mode))
    if errors:
        print(f"torl grade: {errors} invalid input line(s); see their 'error' fields", file=sys.stderr)
        raise typer.Exit(1)


@app.command("train", help="Start every service locally (implies up) and run GRPO training from a config.")
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Run config, e.g. configs/demo-cpu.yaml.")],
    sets: Annotated[
        list[str] | None, typer.Option("--set", "-s", help="Override a learner field: --set loop.total_steps=5.")
    ] = None,
    prometheus: PrometheusOpt = False,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Write logs, state and output here instead of train.run_dir.")
    ] = None,
    learner_ranks: Annotated[
        int | None, typer.Option("--learner-ranks", min=1, max=64,
                                 help="Run the learner as N data-parallel ranks under torchrun (train.learner_ranks).")
    ] = None,
) -> None:
    from torl.cli.up import run_train

    raise typer.Exit(run_train(config, sets or [], prometheus=prometheus, run_dir_override=run_dir,
                               learner_ranks=learner_ranks))


@model_app.command("pretrain", help="Pretrain a tiny model on the synthetic ToRL corpus (staged; cached).")
def model_pretrain(
    out_dir: Annotated[Path, typer.Option("--out", help="Target directory.")] = Path(".cache/models/pretrained-tiny"),
    base: Annotated[Path | None, typer.Option("--base", help="Starting model (default: build the tiny one).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Corpus and init seed.")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, max=256,
                                         help="Torch threads (0: 2 on an idle machine, else 1).")] = 0,
) -> None:
    from torl.learner.pretrain import PretrainSpec, build_base, pretrain

    spec = PretrainSpec(seed=seed)
    out = pretrain(base or build_base(spec), out_dir, spec, progress=lambda m: typer.echo(m, err=True),
                   threads=threads or None)
    typer.echo(str(out))


@app.command("report", help="Write PNG plots and a Markdown summary of a training run from its metrics.jsonl.")
def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run's learner output dir (holds metrics.jsonl) or a `torl train` run_dir.")
    ],
    edge: Annotated[int, typer.Option(min=1, max=1000, help="Steps averaged at the start and at the end.")] = 5,
) -> None:
    from torl.cli.report import ReportError, run_report

    try:
        summary = run_report(run_dir, edge)
    except ReportError as e:
        typer.echo(f"torl report: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {summary.parent} (plots + summary.md)\n")
    typer.echo(summary.read_text(encoding="utf-8").split("![")[0].rstrip())


@app.command("eval-compare", help="Put finished `torl eval` runs side by side (e.g. before and after RL).")
def eval_compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="--out directories of `torl eval` runs; the first is the base.")],
    labels: Annotated[str, typer.Option(help="Comma-separated names for the runs (default: model names).")] = "",
    out: Annotated[Path | None, typer.Option(help="Also write the Markdown table to this file.")] = None,
) -> None:
    from torl.evaluation.runner import read_run
    from torl.evaluation.scoring import comparison_table

    names = [x.strip() for x in labels.split(",")] if labels else [""] * len(runs)
    if len(names) != len(runs):
        raise typer.BadParameter(f"--labels names {len(names)} runs, but {len(runs)} were given")
    try:
        table = comparison_table([read_run(d, n) for d, n in zip(runs, names, strict=True)])
    except (OSError, ValueError) as e:
        typer.echo(f"eval-compare error: {e}", err=True)
        raise typer.Exit(2) from None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n", encoding="utf-8")
    typer.echo(table)


@app.command("version", help="Print the torl version.")
def version() -> None:
    from torl import __version__

    typer.echo(f"torl {__version__}")


def main() -> None:
    try:
        app()
    except Exception as e:
        from torl.common.config import ConfigError  # imported here: keeps `torl --help` light

        if not isinstance(e, ConfigError):
            raise
        print(str(e), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
