"""An English corpus that every Python install has: the standard library's docstrings.

For offline checks on a real model (the tests and benchmarks of SmolLM2): one ``.jsonl`` file,
one document per module (its docstring and those of its public classes, functions and methods),
in a fixed module order, so the same Python version writes the same corpus.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path

MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email", "enum", "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "gzip",
    "hashlib", "heapq", "hmac", "html", "http.client", "http.server", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox", "math", "mimetypes",
    "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pkgutil", "platform",
    "poplib", "pprint", "profile", "queue", "random", "re", "sched", "secrets", "selectors",
    "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "statistics",
    "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest", "urllib.parse",
    "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zoneinfo")


def _docs(obj, depth: int = 0):
    """The docstrings of ``obj`` and, two levels down, of its public members defined with it."""
    doc = inspect.getdoc(obj)
    if doc:
        yield doc
    if depth == 2:
        return
    home = getattr(obj, "__name__", None) if inspect.ismodule(obj) else obj.__module__
    for name, member in sorted(vars(obj).items()):
        if name.startswith("_") or not (inspect.isclass(member) or inspect.isfunction(member)):
            continue
        if getattr(member, "__module__", None) == home:
            yield from _docs(member, depth + 1)


def documents() -> list[str]:
    """One document per module of :data:`MODULES` that imports here."""
    out = []
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        text = "\n\n".join(_docs(module))
        if text:
            out.append(text)
    return out


def write_corpus(directory) -> Path:
    """Write ``directory/stdlib_docstrings.jsonl`` and return its path."""
    path = Path(directory) / "stdlib_docstrings.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents()),
                    encoding="utf-8")
    return path
