"""Keep the code `dataclasses` generates, as Python keeps our own in .pyc files.

Each `@dataclass` compiles its `__init__`, `__repr__`, `__eq__` (and, frozen,
`__setattr__`, `__delattr__`, `__hash__`) from source text when its module is
imported: about 1 ms per class on a small VM, some 40 ms of every hcbak command
(benchmarks/RESULTS.md). That text is the same at every start. So the compiled code
objects are kept in one file per interpreter build, keyed by the exact text:
a hit is the code `compile` would have made, a miss compiles as before.

The file lives in `$XDG_CACHE_HOME/hcbak` (else `~/.cache/hcbak`), is written
atomically, and is used only when it belongs to this user and nobody else can write
it (it holds code, as a .pyc does). Anything unexpected - no home, a damaged or
foreign file, a read-only disk - means compiling as before. HCBAK_NO_CODE_CACHE=1
turns it off.
"""

import atexit
import builtins
import dataclasses
import marshal
import os
import sys
from types import CodeType

MAX_ENTRIES = 4000  # beyond this, a save keeps only what this process used

_FILE_NAME = f"dataclass-code-{sys.implementation.cache_tag}-{sys.hexversion:x}.marshal"


class CodeCache:
    """Source text -> code object, loaded from and saved to one file."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.codes: dict[str, CodeType] = _load(path) if path else {}
        self.used: set[str] = set()
        self.added = 0

    def compile(self, source: str) -> CodeType:
        code = self.codes.get(source)
        if code is None:
            # dont_inherit: dataclasses' own exec compiles with no __future__ flags
            code = compile(source, "<string>", "exec", dont_inherit=True)
            self.codes[source] = code
            self.added += 1
        self.used.add(source)
        return code

    def exec(self, source: object, globals: object = None, locals: object = None) -> None:
        """What `dataclasses` calls instead of the builtin `exec`."""
        if isinstance(source, str):
            source = self.compile(source)
        builtins.exec(source, globals, locals)  # type: ignore[arg-type]

    def save(self) -> None:
        if not self.path or not self.added:
            return
        codes = self.codes
        if len(codes) > MAX_ENTRIES:
            codes = {k: v for k, v in codes.items() if k in self.used}
        folder = os.path.dirname(self.path)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(tmp, flags, 0o600)  # never through a link someone left there
            with os.fdopen(fd, "wb") as fh:
                fh.write(marshal.dumps(codes))
            os.replace(tmp, self.path)
            self.added = 0
        except FileExistsError:  # a leftover of a process with our pid: not ours to use
            return
        except OSError:  # a read-only or full disk: the next start compiles again
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _load(path: str) -> dict[str, CodeType]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return {}  # code another user could have written is never run
            data = marshal.loads(fh.read())
    except (OSError, EOFError, ValueError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, CodeType)}


def default_path() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.environ.get("HOME")
        if not home:
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "hcbak", _FILE_NAME)


def install() -> CodeCache | None:
    """Route `dataclasses`' compiles through the cache (once per process)."""
    if os.environ.get("HCBAK_NO_CODE_CACHE") == "1" or hasattr(dataclasses, "exec"):
        return None
    cache = CodeCache(default_path())
    dataclasses.exec = cache.exec  # type: ignore[attr-defined]
    atexit.register(cache.save)
    return cache
