"""The `searchrl` command line.

  searchrl up -c CONFIG [--steps N] [--run-dir D] [--set key=value ...]
  searchrl serve {retriever,reward,rollout,trainer} -c CONFIG [--set ...]
  searchrl serve agent -c CONFIG [--model DIR] [--port P] [--retriever ADDR]   (docs/serving.md)
  searchrl retriever build-index -c CONFIG [--force]
  searchrl demo [--protocol P | -c configs/demo-cpu.yaml] [--steps N] [--minutes M] [--curve] [--baselines]
  searchrl eval -c CONFIG (--data FILE | --suite r1searcher) [--model PATH] [--mode M ...] [--limit N]
                [--judge [--judge-url URL --judge-model NAME]] [--out DIR]       (docs/evaluation.md)
  searchrl grade -c CONFIG --data FILE [--model PATH] [--limit N] [--out DIR]   (R1-Searcher difficulty levels)
  searchrl reward score --preset P [-c CONFIG] [--set reward.r1s_...] < in.jsonl > out.jsonl   (docs/rewards.md)
  searchrl audit --run-dir D [--json]       (every prompt task accounted for; exit 1 on a double or a loss)
  searchrl cluster {status,scale COMPONENT=N,wait-index} ...   (a Helm release; searchrl/cluster.py)
Config problems exit with status 2 and a message naming the key and the file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from searchrl.config import ConfigError, load_config, redact


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML config file (default: embedded defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.lr=1e-6 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="searchrl", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p_up = sub.add_parser("up", help="run the whole system locally and train N steps")
    _config_args(p_up)
    p_up.add_argument("--steps", type=int, help="training steps (trainer.max_steps)")
    p_up.add_argument(
        "--run-dir",
        help="run directory (default: <run.run_dir>/<config>-<time>); resumes if it holds checkpoints",
    )

    p_serve = sub.add_parser("serve", help="run one service in the foreground")
    p_serve.add_argument("service", choices=["retriever", "reward", "rollout", "trainer", "agent"])
    _config_args(p_serve)
    p_serve.add_argument("--model", help="agent: HF folder or builtin:NAME (default: model.path)")
    p_serve.add_argument("--port", type=int, help="agent: HTTP port (default 8080)")
    p_serve.add_argument(
        "--retriever", metavar="ADDR", help="agent: a running retriever service (default: built in process)"
    )

    p_ret = sub.add_parser("retriever", help="retriever tools")
    ret_sub = p_ret.add_subparsers(dest="action", required=True)
    p_build = ret_sub.add_parser(
        "build-index", help="build the index retriever.mode reads (FAISS tier, BM25, this replica's shard)"
    )
    _config_args(p_build)
    p_build.add_argument("--force", action="store_true", help="rebuild even if a current index exists")

    p_demo = sub.add_parser("demo", help="CPU demo: evaluate, train on the bundled world, report")
    p_demo.add_argument(
        "-c", "--config", help="default: configs/demo-cpu.yaml, or the --protocol's demo config"
    )
    p_demo.add_argument(
        "--protocol",
        choices=["r1searcher", "research", "search-r1"],
        help="search protocol: picks configs/demo-cpu-<P>.yaml (r1searcher: demo-cpu.yaml) unless -c is given, "
        "and sets rollout.protocol",
    )
    p_demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p_demo.add_argument("--steps", type=int, help="training steps (default: the config's trainer.max_steps)")
    p_demo.add_argument("--minutes", type=float, help="training time budget (trainer.max_minutes)")
    p_demo.add_argument("--eval-questions", type=int, default=100, help="held-out questions per evaluation")
    p_demo.add_argument(
        "--curve",
        action="store_true",
        help="also evaluate the policies exported during training (hf/step_N) for the held-out CEM curve",
    )
    p_demo.add_argument(
        "--baselines",
        action="store_true",
        help="also evaluate the untrained model without retrieval and with naive RAG (~2 min on 2 cores)",
    )
    p_demo.add_argument("--run-dir", help="default: <run.run_dir>/demo-<time>")

    p_eval = sub.add_parser(
        "eval", help="greedy evaluation: no-retrieval / naive-rag / iter-retgen / ircot / search-agent"
    )
    _config_args(p_eval)
    p_eval.add_argument(
        "--model",
        action="append",
        help="HF folder or builtin:NAME (default: model.path); "
        "repeatable: later models are swapped into the same engine by weight reload",
    )
    p_eval.add_argument("--data", help="R1-Searcher-format JSONL (question, answer)")
    p_eval.add_argument(
        "--suite",
        choices=["r1searcher"],
        help="instead of --data: HotpotQA, 2Wiki, MuSiQue, Bamboogle from eval.suite_dir, one table",
    )
    p_eval.add_argument(
        "--mode",
        action="append",
        choices=["no-retrieval", "naive-rag", "iter-retgen", "ircot", "search-agent"],
        help="repeatable; default: no-retrieval, naive-rag, search-agent (--suite: all five)",
    )
    p_eval.add_argument(
        "--judge",
        action="store_true",
        help="LLM-as-judge (R1-Searcher's True/False): eval.judge_url, else a local vLLM server on "
        "eval.judge_model_path (default model.path)",
    )
    p_eval.add_argument("--judge-url", help="OpenAI-compatible base URL (eval.judge_url); implies --judge")
    p_eval.add_argument("--judge-model", help="model name at --judge-url (eval.judge_model)")
    p_eval.add_argument("--limit", type=int, help="N questions spread evenly over the file")
    p_eval.add_argument("--out", help="directory for results.json and <mode>.jsonl (default: <run_dir>/eval)")

    p_grade = sub.add_parser(
        "grade", help="R1-Searcher difficulty by rollouts-to-solve; writes stage-1 / stage-2 training files"
    )
    _config_args(p_grade)
    p_grade.add_argument("--data", required=True, help="training questions (any format `eval` reads)")
    p_grade.add_argument("--model", help="HF folder or builtin:NAME (default: model.path)")
    p_grade.add_argument("--limit", type=int, help="N questions spread evenly over the file")
    p_grade.add_argument("--out", help="directory for grades.jsonl, stage_1.jsonl, stage_2.jsonl")

    p_rew = sub.add_parser("reward", help="reward tools")
    rew_sub = p_rew.add_subparsers(dest="action", required=True)
    p_score = rew_sub.add_parser("score", help="score JSONL from stdin, write JSONL to stdout")
    p_score.add_argument(
        "--preset",
        required=True,
        help="r1s-stage1 | r1s-stage2 | research | search-r1-em | search-r1-format (docs/rewards.md)",
    )
    _config_args(p_score)  # the reward.r1s_* switches

    p_audit = sub.add_parser(
        "audit", help="account for every prompt task of a run (exit 1 on a double or loss)"
    )
    p_audit.add_argument(
        "--run-dir", required=True, help="the run directory (its config.yaml names the Redis)"
    )
    p_audit.add_argument("-c", "--config", help="config when the run dir has no config.yaml")
    p_audit.add_argument("--json", action="store_true", help="the report as JSON")

    from searchrl.cluster import add_parser as add_cluster_parser

    add_cluster_parser(sub)
    return parser


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        if args.command == "reward":
            from searchrl_reward.cli import score_stream

            score_stream(args.preset, load_config(args.config, args.overrides).reward)
            return 0
        if args.command == "audit":
            from searchrl.audit import main as audit_main

            return audit_main(args.run_dir, args.config, args.json)
        if args.command == "cluster":
            from searchrl.cluster import run as run_cluster

            return run_cluster(args)
        if args.command == "demo":
            from searchrl.demo import demo_config_file

            args.config = args.config or demo_config_file(args.protocol)
            if args.protocol:
                args.overrides = [f"rollout.protocol={args.protocol}", *args.overrides]
        cfg = load_config(args.config, args.overrides)
        _setup_logging(cfg.run.log_level)
        if args.command == "up":
            from searchrl.launcher import up

            if args.steps is not None:
                cfg.trainer.max_steps = args.steps
            stem = Path(args.config).stem if args.config else "defaults"
            cfg.run.run_dir = args.run_dir or str(
                Path(cfg.run.run_dir) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
            return up(cfg)
        if args.command == "serve" and args.service == "agent":
            from searchrl.agent.serve import serve_agent

            return serve_agent(cfg, args.model, args.port, args.retriever)
        if args.command == "serve":
            if args.model or args.port or args.retriever:
                raise ConfigError("--model / --port / --retriever: only for `searchrl serve agent`")
            from searchrl.services import serve

            return serve(args.service, cfg)
        if args.command == "demo":
            from searchrl.demo import demo

            run_dir = args.run_dir or str(Path(cfg.run.run_dir) / f"demo-{time.strftime('%Y%m%d-%H%M%S')}")
            return demo(
                cfg, args.steps, args.minutes, Path(run_dir), args.eval_questions, args.curve, args.baselines
            )
        if args.command == "eval":
            from searchrl.eval_cli import run_eval

            if args.judge_url:
                cfg.eval.judge_url = args.judge_url
            if args.judge_model:
                cfg.eval.judge_model = args.judge_model
            judge = args.judge or bool(args.judge_url)
            return run_eval(cfg, args.model, args.data, args.mode, args.limit, args.out, judge, args.suite)
        if args.command == "grade":
            from searchrl.grade import run_grade

            out = args.out or str(Path(cfg.run.run_dir) / "grade")
            return run_grade(cfg, args.model, args.data, args.limit, out)
        if args.command == "retriever":
            from searchrl_retriever.backend import build_indexes

            print(build_indexes(cfg, force=args.force, progress=True))
            return 0
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())
