"""`torl up` and `torl train`: the whole system as local processes on loopback.

`torl up` starts its own redis-server (own dir, AOF, noeviction), the executor (gVisor), reward,
rollout and learner, prints where each listens, and stops them all on Ctrl-C or SIGTERM (children
get SIGTERM in reverse order, then SIGKILL of their process groups, so no process or sandbox is
left). Each service serves /metrics on a loopback port listed in <run_dir>/prometheus/targets.json
(with a ready prometheus.yml beside it); `--prometheus` also starts a Prometheus server on it
(torl.cli.monitoring). `torl train --config F` does the same with the learner training: it prepares the model the
config names (for the demo: the tiny model, pretrained on the synthetic corpus, cached), shows a
progress bar per step, waits for the learner to finish, and writes the report (PNG plots and a
Markdown summary).

Every service validates its section of F before anything heavy starts, so a typo fails at once.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from torl.cli.local import Child, Supervisor, free_port, torchrun_args
from torl.cli.placement import PlacementSettings, wiring
from torl.common.config import ConfigError, StrictModel, read_config_file
from torl.common.files import write_json_atomic

SERVICE_ORDER = ("executor", "reward", "rollout", "learner")


class TrainCommandSettings(StrictModel):
    """The `train:` section of a config file (what `torl train` itself does)."""

    run_dir: str = Field("runs/demo", description="Logs, Redis data, learner output and the report.")
    run_id: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$", description="Run id (Redis key prefix).")
    model: str = Field(
        "pretrained-tiny",
        description="'pretrained-tiny' (build + pretrain the demo model, cached), 'tiny' (the kit's model) or "
        "a model directory.",
    )
    model_cache_dir: str = Field(".cache/models", description="Where built models are cached.")
    start_timeout_seconds: float = Field(600.0, gt=0.0, le=7200.0, description="Wait for services to be healthy.")
    fresh: bool = Field(True, description="Start from scratch: clear run_dir's learner output and Redis data.")
    report: bool = Field(True, description="Write plots and summary.md when training finishes.")
    learner_ranks: int = Field(
        1, ge=1, le=64,
        description="Run the learner as this many data-parallel ranks under torchrun (gloo on CPU, one per GPU "
        "with CUDA); rank 0 serves and orchestrates, the others train their share of each step.",
    )
    placement: PlacementSettings = Field(
        default_factory=lambda: PlacementSettings(),
        description="GPUs of rollout and learner on this machine (cpu: none; separate; shared with fractions).",
    )


def load_train_section(config: Path | None) -> TrainCommandSettings:
    data = read_config_file(config, "train") if config is not None else {}
    try:
        return TrainCommandSettings(**data)
    except ValidationError as e:
        lines = [f"config error: train.{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError("\n".join(lines)) from None


@dataclass
class Stack:
    """Ports and children of a running local system."""

    run_dir: Path
    run_id: str
    redis_port: int
    ports: dict[str, int]
    children: dict[str, Child] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    rest_port: int = field(default_factory=free_port)  # the executor's REST API
    prometheus_url: str = ""

    @property
    def prometheus_dir(self) -> Path:
        return self.run_dir / "prometheus"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports[service]}"


def service_sets(stack: Stack, model_dir: str, train: bool) -> dict[str, list[str]]:
    """The `--set` wiring that connects the services to each other and to our Redis."""
    rd = stack.run_dir.resolve()
    sets: dict[str, list[str]] = {
        "executor": [
            f"rest.port={stack.rest_port}",
            f"sandbox.state_dir={rd / 'executor-state'}",
            f"sandbox.name_prefix=torl-up-{os.getpid()}",
        ],
        "reward": [],
        "rollout": [
            f"queue.redis_url={stack.redis_url}",
            f"queue.run_id={stack.run_id}",
            f"deps.executor_target={stack.target('executor')}",
            f"deps.reward_target={stack.target('reward')}",
        ],
        "learner": [
            f"redis_url={stack.redis_url}",
            f"run_id={stack.run_id}",
            f'weight_sync.replicas=["{stack.target("rollout")}"]',
            f"output_dir={rd / 'learner'}",
        ],
    }
    if model_dir:
        sets["rollout"].append(f"engine.model_dir={model_dir}")
        sets["learner"].append(f"model_dir={model_dir}")
    if train:
        sets["learner"].append("train=true")
    return sets


def validate_all(config: Path | None, sets: dict[str, list[str]], prometheus: bool = False) -> None:
    """Every service's effective config (and, with `prometheus`, the prometheus binary) checked before
    anything starts: a ConfigError on a typo, not minutes later."""
    from torl.cli.main import build_settings

    for name in SERVICE_ORDER:
        build_settings(name, config, sets[name])
    if prometheus:
        from torl.cli.monitoring import prometheus_binary

        prometheus_binary()


def start_prometheus(sup: Supervisor, stack: Stack) -> str:
    """A Prometheus server on the run's prometheus.yml (scrapes every service, loads the alerts); its URL."""
    from torl.cli.monitoring import prometheus_args

    port = free_port()
    config = stack.prometheus_dir / "prometheus.yml"
    child = sup.start_prometheus(prometheus_args(config, stack.prometheus_dir / "data", port), port)
    sup.wait_healthy(child, 60)
    stack.children["prometheus"] = child
    return f"http://127.0.0.1:{port}"


def start_stack(sup: Supervisor, stack: Stack, config: Path | None, sets: dict[str, list[str]],
                timeout: float, services: tuple[str, ...] = SERVICE_ORDER, prometheus: bool = False,
                learner_ranks: int = 1, env: dict[str, dict[str, str]] | None = None) -> None:
    """Redis first, then `services` in dependency order, each waited for until healthy; their
    /metrics ports go to <run_dir>/prometheus/targets.json (and, with `prometheus`, to a server).
    With `learner_ranks` > 1 the learner runs under torchrun on this node; `env` adds to a service's
    environment (the GPU placement)."""
    from torl.cli.monitoring import write_config, write_targets

    stack.metrics_ports = {name: free_port() for name in services}
    write_targets(stack.prometheus_dir, stack.metrics_ports)
    write_config(stack.prometheus_dir)
    if prometheus:
        stack.prometheus_url = start_prometheus(sup, stack)
        print(f"prometheus on {stack.prometheus_url} (scraping {stack.prometheus_dir / 'targets.json'}, "
              "alert rules loaded)", flush=True)
    print(f"starting redis-server on 127.0.0.1:{stack.redis_port}", flush=True)
    redis_child = sup.start_redis(stack.redis_port, stack.run_dir / "redis")
    sup.wait_healthy(redis_child, 30)
    stack.children["redis"] = redis_child
    for name in services:
        extra = ["--metrics-port", str(stack.metrics_ports[name]), "--set", "metrics_host=127.0.0.1"]
        if config is not None:
            extra += ["--config", str(config)]
        for s in sets[name]:
            extra += ["--set", s]
        print(f"starting {name:<9} ...", end="", flush=True)
        t0 = time.monotonic()
        launcher = torchrun_args(learner_ranks, free_port()) if name == "learner" and learner_ranks > 1 else []
        child = sup.start_service(name, stack.ports[name], extra, launcher=launcher, env=(env or {}).get(name))
        sup.wait_healthy(child, timeout)
        stack.children[name] = child
        print(f" SERVING on {child.grpc_target}, /metrics on 127.0.0.1:{stack.metrics_ports[name]} "
              f"({time.monotonic() - t0:.1f}s, log {child.log_path})", flush=True)
    write_endpoints(stack)


def write_endpoints(stack: Stack) -> Path:
    """<run_dir>/endpoints.json: where every part of the run listens (for scripts and tests)."""
    services = {name: {"grpc": stack.target(name), "metrics": f"127.0.0.1:{port}"}
                for name, port in stack.metrics_ports.items() if name in stack.children}
    data = {
        "run_id": stack.run_id,
        "redis": stack.redis_url,
        "services": services,
        "executor_rest": f"http://127.0.0.1:{stack.rest_port}" if "executor" in services else "",
        "prometheus": stack.prometheus_url,
    }
    path = stack.run_dir / "endpoints.json"
    write_json_atomic(path, data, indent=1)  # scripts poll for it: never let them read half of it
    return path


def install_stop_signals() -> None:
    """SIGTERM and SIGINT both stop the stack. SIGINT's handler is set explicitly: a process started
    from a shell that ignores SIGINT (a background job, nohup) inherits the ignore, and Python then
    installs no KeyboardInterrupt handler of its own, so Ctrl-C would do nothing."""
    def _raise(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)


def run_up(run_dir: Path, check: bool, timeout: float = 300.0, config: Path | None = None,
           prometheus: bool = False) -> int:
    """Start all services; with `check`, print their health and stop; else run until Ctrl-C."""
    ports = {name: free_port() for name in SERVICE_ORDER}
    stack = Stack(run_dir, "up", free_port(), ports)
    sets = service_sets(stack, "", train=False)
    validate_all(config, sets, prometheus)
    install_stop_signals()
    with Supervisor(run_dir / "logs") as sup:
        try:
            start_stack(sup, stack, config, sets, timeout, prometheus=prometheus)
            if check:
                print("all services healthy; stopping (--check)")
                return 0
            print(f"all services healthy (redis {stack.redis_url}); Ctrl-C stops them", flush=True)
            while True:
                sup.check_alive()
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping services", file=sys.stderr)
        finally:
            sup.stop_all()
    return 0


def prepare_model(cfg: TrainCommandSettings) -> str:
    """The model directory the run starts from (built and cached for the tiny choices)."""
    if cfg.model not in ("tiny", "pretrained-tiny"):
        if not Path(cfg.model, "config.json").is_file():
            raise ConfigError(f"config error: train.model: {cfg.model} is not a model directory (no config.json)")
        return str(Path(cfg.model).resolve())
    from torl.learner.pretrain import build_base, pretrain
    from torl.rollout.tiny_model import build_tiny

    cache = Path(cfg.model_cache_dir).resolve()
    t0 = time.monotonic()
    print("building the tiny model (cached after the first run) ...", flush=True)
    # The kit's own cache ($TORL_CACHE_DIR or ~/.cache/torl), shared with tests.
    base = build_tiny() if cfg.model == "tiny" else build_base()
    print(f"  tiny model ready: {base} ({time.monotonic() - t0:.0f}s)", flush=True)
    if cfg.model == "tiny":
        return str(base)

    t0 = time.monotonic()
    print("pretraining it on the synthetic ToRL corpus (cached after the first run) ...", flush=True)
    out = pretrain(base, cache / "pretrained-tiny", progress=lambda s: print(f"  {s}", flush=True))
    print(f"  pretrained model ready: {out} ({time.monotonic() - t0:.0f}s)", flush=True)
    return str(out)


def _progress_line(row: dict[str, Any], total: int, width: int = 24) -> str:
    step = int(row["step"])
    filled = int(width * step / max(total, 1))
    bar = "#" * filled + "-" * (width - filled)
    return (f"[{bar}] step {step:>4}/{total}  reward {row['reward_mean']:+.2f}  acc {row['accuracy']:.2f}  "
            f"tool {row['tool_use_rate']:.2f}  len {row['response_tokens']:.0f}  {row['step_seconds']:.1f}s/step")


def follow_training(learner: Child, metrics_path: Path, total: int) -> int:
    """Print one progress line per step until the learner exits; its exit code."""
    assert learner.proc is not None
    seen = 0
    while True:
        done = learner.proc.poll() is not None
        if metrics_path.is_file():
            lines = metrics_path.read_text(encoding="utf-8").splitlines()
            for line in lines[seen:]:
                row = json.loads(line)
                if "reward_mean" in row:
                    print(_progress_line(row, total), flush=True)
                elif "eval_accuracy" in row:
                    print(f"  eval @ step {row['step']}: accuracy {row['eval_accuracy']:.2f}  "
                          f"reward {row['eval_reward_mean']:+.2f}  tool {row['eval_tool_use_rate']:.2f}", flush=True)
            seen = len(lines)
        if done:
            return int(learner.proc.returncode or 0)
        time.sleep(1.0)


def run_train(config: Path, sets_extra: list[str] | None = None, prometheus: bool = False,
              run_dir_override: Path | None = None, learner_ranks: int | None = None) -> int:
    """`torl train --config F`: up + training + report (in `run_dir_override` instead of train.run_dir,
    with `learner_ranks` instead of train.learner_ranks)."""
    import shutil

    from torl.cli.main import build_settings

    cfg = load_train_section(config)
    if run_dir_override is not None:
        cfg.run_dir = str(run_dir_override)
    if learner_ranks is not None:
        cfg.learner_ranks = learner_ranks
    try:
        placed = wiring(cfg.placement, cfg.learner_ranks)
    except ValueError as e:
        raise ConfigError(f"config error: {e}") from None
    run_dir = Path(cfg.run_dir)
    ports = {name: free_port() for name in SERVICE_ORDER}
    stack = Stack(run_dir, cfg.run_id, free_port(), ports)
    # Validate first with a placeholder model dir; the real one is built below.
    sets = service_sets(stack, "", train=False)
    for name, extra in placed.sets.items():
        sets[name] += extra
    sets["learner"] += list(sets_extra or [])
    validate_all(config, sets, prometheus)
    if cfg.fresh:
        for sub in ("learner", "redis", "logs", "executor-state", "prometheus"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    install_stop_signals()
    t_start = time.monotonic()
    with Supervisor(run_dir / "logs") as sup:
        try:
            model_dir = prepare_model(cfg)
            sets = service_sets(stack, model_dir, train=True)
            for name, extra in placed.sets.items():
                sets[name] += extra
            sets["learner"] += list(sets_extra or [])
            learner_settings: Any = build_settings("learner", config, sets["learner"])
            start_stack(sup, stack, config, sets, cfg.start_timeout_seconds, prometheus=prometheus,
                        learner_ranks=cfg.learner_ranks, env=placed.env)
            total = int(learner_settings.loop.total_steps)
            print(f"training {total} steps (run {cfg.run_id}; learner {cfg.learner_ranks} rank(s), "
                  f"log {stack.children['learner'].log_path})", flush=True)
            rc = follow_training(stack.children["learner"], Path(learner_settings.output_dir) / "metrics.jsonl",
                                 total)
            if rc != 0:
                log_tail = stack.children["learner"].log_path.read_text(errors="replace").splitlines()[-20:]
                print("learner failed:\n" + "\n".join(log_tail), file=sys.stderr)
                return 1
            if cfg.report:
                from torl.learner.report import write_report

                summary = write_report(Path(learner_settings.output_dir))
                print(f"\nreport: {summary.parent} (plots + summary.md)\n")
                print(summary.read_text(encoding="utf-8").split("![")[0])
            print(f"done in {time.monotonic() - t_start:.0f}s", flush=True)
            return 0
        except KeyboardInterrupt:
            print("\nstopping services", file=sys.stderr)
            return 130
        finally:
            sup.stop_all()
