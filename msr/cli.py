"""The `msr` command: one subcommand per stage, each a thin call into the module that owns it.

An error the user caused (a config, a path, a model name, a missing input, a busy stage) ends in one
line, `msr: error: ...`, naming the file, key or value and the fix, and exit status 2; everything
else is a bug and keeps its traceback (see `USER_ERRORS`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence

from msr import __version__
from msr.config import ConfigError, parse_config
from msr.rundir import StageBusyError


def _data_prepare(argv: Sequence[str]) -> None:
    from msr.data.prepare import PrepareConfig, prepare

    stats = prepare(parse_config(PrepareConfig, argv, prog="msr data prepare"))
    print(json.dumps(stats, indent=2))


def _data_images(argv: Sequence[str]) -> None:
    from msr.data.download import ImagesConfig, download_images

    print(json.dumps(download_images(parse_config(ImagesConfig, argv, prog="msr data images")), indent=2))


def _data_synth(argv: Sequence[str]) -> None:
    from msr.data.synthetic import SynthConfig, generate

    out = generate(parse_config(SynthConfig, argv, prog="msr data synth"))
    print(f"embedded dataset (MicroLens layout) in {out}")


def _data_sft(argv: Sequence[str]) -> None:
    from msr.data.sft import SftDataConfig, write_sft_rows

    print(json.dumps(write_sft_rows(parse_config(SftDataConfig, argv, prog="msr data sft"))))


def _summarize_items(argv: Sequence[str]) -> None:
    from msr.summarize.config import SummarizeConfig
    from msr.summarize.items import summarize_items

    print(json.dumps(summarize_items(parse_config(SummarizeConfig, argv, prog="msr summarize items"))))


def _summarize_users(argv: Sequence[str]) -> None:
    from msr.summarize.config import SummarizeConfig
    from msr.summarize.users import summarize_users

    print(json.dumps(summarize_users(parse_config(SummarizeConfig, argv, prog="msr summarize users"))))


def _score(argv: Sequence[str]) -> None:
    from msr.score_split import ScoreConfig, score_split

    table = score_split(parse_config(ScoreConfig, argv, prog="msr score"))
    if len(table):
        print(f"{len(table)} candidates scored")


def _evaluate(argv: Sequence[str]) -> None:
    from msr.evaluate import EvaluateConfig, evaluate, report

    cfg = parse_config(EvaluateConfig, argv, prog="msr evaluate")
    print(report(evaluate(cfg), cfg.ks))


def _spread(argv: Sequence[str]) -> None:
    from msr.spread import SpreadConfig, spread, spread_report

    print(spread_report(spread(parse_config(SpreadConfig, argv, prog="msr spread"))))


def _graph_train(argv: Sequence[str]) -> None:
    from msr.graph.config import GraphConfig
    from msr.graph.pipeline import train_graph

    record = train_graph(parse_config(GraphConfig, argv, prog="msr graph train"))
    print(json.dumps({k: v for k, v in record.items() if k != "history"}))


def _graph_evaluate(argv: Sequence[str]) -> None:
    from msr.graph.config import GraphConfig
    from msr.graph.pipeline import evaluate_graph

    print(json.dumps(evaluate_graph(parse_config(GraphConfig, argv, prog="msr graph evaluate")), indent=2))


def _baselines_train(argv: Sequence[str]) -> None:
    from msr.baselines.config import BaselineConfig
    from msr.baselines.pipeline import train_baseline

    print(json.dumps(train_baseline(parse_config(BaselineConfig, argv, prog="msr baselines train")), indent=2))


def _baselines_evaluate(argv: Sequence[str]) -> None:
    from msr.baselines.config import BaselineConfig
    from msr.baselines.pipeline import evaluate_baseline

    print(json.dumps(evaluate_baseline(parse_config(BaselineConfig, argv, prog="msr baselines evaluate")), indent=2))


def _tiny(argv: Sequence[str]) -> None:
    from msr.tiny import TinyConfig, build_from_config

    out = build_from_config(parse_config(TinyConfig, argv, prog="msr tiny"))
    print(f"tiny model in {out}")


def _convert_gguf(argv: Sequence[str]) -> None:
    from msr.convert import GgufConfig, convert

    print(f"transformers model in {convert(parse_config(GgufConfig, argv, prog='msr convert gguf'))}")


def _quickstart(argv: Sequence[str]) -> None:
    from msr.quickstart import QuickstartConfig, quickstart

    quickstart(parse_config(QuickstartConfig, argv, prog="msr quickstart"))


# (words, help, handler): the words are the subcommand path, e.g. ("data", "prepare")
COMMANDS: list[tuple[tuple[str, ...], str, Callable[[Sequence[str]], None]]] = [
    (("quickstart",), "every stage on the embedded dataset, offline, on CPU", _quickstart),
    (("data", "synth"), "generate the embedded dataset (MicroLens layout, with ground truth)", _data_synth),
    (("data", "images"), "download one image per catalog item (Amazon 2018/2023, generic URLs), resumable",
     _data_images),
    (("data", "prepare"), "raw dataset -> items, interactions, examples (k-core, split, negatives)",
     _data_prepare),
    (("data", "sft"), "examples + summaries -> TRL prompt/completion rows (train with recipes/sft.py)", _data_sft),
    (("summarize", "items"), "one paragraph per item from its image and text (VLM), cached", _summarize_items),
    (("summarize", "users"), "each example's preference text, folded block by block in time order", _summarize_users),
    (("score",), "P(Yes) for every candidate of a split (one forward per batch, shared prefix reused)", _score),
    (("evaluate",), "scores -> AUC, HR/NDCG/MRR@K per method beside baselines, with 95%% intervals and "
     "p-values; full ranking of retrieved lists",
     _evaluate),
    (("spread",), "one protocol over seeds: the spread of every figure across seeds beside its interval over users",
     _spread),
    (("graph", "train"), "MLLMRec: embed texts, build the item-item graph from training data, fit the towers",
     _graph_train),
    (("graph", "evaluate"), "MLLMRec: full-ranking Recall/NDCG@K and scores for the candidates of `msr evaluate`",
     _graph_evaluate),
    (("baselines", "train"), "SASRec / GRU4Rec on the split's training interactions, early-stopped on validation",
     _baselines_train),
    (("baselines", "evaluate"), "a sequential baseline (or popularity): candidate scores, full ranking, top-K lists",
     _baselines_evaluate),
    (("tiny",), "build a tiny random VLM or text LM offline, or tiny weights around a published processor", _tiny),
    (("convert", "gguf"), "a GGUF checkpoint (llama.cpp) -> a transformers folder, weights dequantized", _convert_gguf),
]


# What a user can cause, by type: msr raises these (ConfigError and other ValueErrors for settings and stale
# inputs, FileNotFoundError for missing files, models and inputs, StageBusyError), and the OS raises the OSError
# kinds for the paths a user gives (a run_dir or output that is a file, a folder, or not writable). Any other
# exception (KeyError, TypeError, RuntimeError, other OSErrors...) is a bug or an outage and shows its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ValueError, FileNotFoundError, StageBusyError,
    PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msr", description="Multimodal LLMs as sequential recommenders. Each stage takes "
        "--config FILE.yaml and --key value overrides; `msr STAGE --help` lists its keys.")
    parser.add_argument("--version", action="version", version=f"msr {__version__}")
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(
        dest="command", metavar="STAGE", required=True)}
    for words, help_text, handler in COMMANDS:
        for depth in range(1, len(words)):
            prefix = words[:depth]
            if prefix not in groups:
                group = groups[prefix[:-1]].add_parser(prefix[-1], help=f"{prefix[-1]} stages")
                groups[prefix] = group.add_subparsers(dest=f"command{depth}", metavar="STAGE", required=True)
        leaf = groups[words[:-1]].add_parser(words[-1], help=help_text, add_help=False)
        leaf.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args, rest = build_parser().parse_known_args(argv)
    try:
        args.handler(rest)
    except USER_ERRORS as err:
        print(f"msr: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every stage writes atomically and resumes, so no traceback to read
        print("msr: interrupted; run the same command again to resume (finished work is kept)", file=sys.stderr)
        return 130
    return 0


def _one_line(err: BaseException) -> str:
    """An error as one line: an OSError from the OS names its path and says what to check."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror.lower()}; check that path (or its permissions) and run again"
    text = " ".join(str(err).split()) or type(err).__name__
    if type(err).__module__.startswith("pyarrow"):  # a table arrow cannot read: damaged, or not a table
        text += ("; if it is a table msr wrote, it is damaged (an interrupted copy, an edit): re-run the stage "
                 "that wrote it with --force")
    return text


if __name__ == "__main__":
    sys.exit(main())
