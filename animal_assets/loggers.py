"""The console logger of the graph's runs: Dagster's format, each message cut to its first line.

Dagster's default console logger prints a failed step's whole error, two or three "Stack Trace"
blocks, before ``animal-assets run`` can print its one line. This logger replaces it under the
same name (``console``) and config (``log_level``, ``name``): the same lines, without what
follows a message's first line; with ``errors: false`` (what ``animal-assets run`` sets unless
``--verbose``) no ERROR record at all, since the command ends a failed run with one line of its
own. The full errors stay in the instance's event log, which the UI shows; a logger only
decides what reaches the terminal.
"""
from __future__ import annotations

import logging
import sys

import dagster as dg


class _FirstLine(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.split("\n", 1)[0]

    def formatException(self, ei) -> str:  # noqa: N802 - the logging API's name
        return ""


@dg.logger(
    {
        "log_level": dg.Field(str, is_required=False, default_value="INFO",
                              description="The logger's threshold."),
        "name": dg.Field(str, is_required=False, default_value="dagster",
                         description="The name of the logger."),
        "errors": dg.Field(bool, is_required=False, default_value=True,
                           description="Print ERROR records (a failed step, every step it kept "
                                       "from running, the failed run). The animal-assets "
                                       "command sets it to false unless --verbose: it ends a "
                                       "failed run with one line of its own."),
    },
    description="Dagster's console format on stderr, each message cut to its first line.",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    log = logging.Logger(config["name"], level=config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FirstLine("%(asctime)s - %(name)s - %(levelname)s - %(message)s",
                                    "%Y-%m-%d %H:%M:%S %z"))
    if not config["errors"]:
        handler.addFilter(lambda record: record.levelno < logging.ERROR)
    log.addHandler(handler)
    return log
