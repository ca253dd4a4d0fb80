"""The subcommands of issue 25 (seeing inside), added to ``minivit``'s parser by ``cli.py``:
``minivit graph``, ``minivit summary``, ``minivit attention``."""
from __future__ import annotations

from .attention import add_attention_parser, attention_command
from .graph import add_graph_parser, graph_command
from .summary import add_summary_parser, summary_command


def add_parsers(sub) -> None:
    add_graph_parser(sub)
    add_summary_parser(sub)
    add_attention_parser(sub)


COMMANDS = {"graph": graph_command, "summary": summary_command, "attention": attention_command}
