"""What the fault tables share: a `Case` (one mistake a user makes and what the kit must answer) and `outcome`, the
verdict on one case: 'clear' (the expected error type, every naming word in its message, raised by core_models' own
code), 'unclear' (raised, but not like that) or 'silent' (accepted without an error)."""
import os, traceback, warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PKG = Path(__import__('core_models').__file__).resolve().parent


@dataclass
class Case:
    id: str                          # area/what, e.g. 'settings/duplicate-key'
    make: Callable[[Path], Any]      # makes the bad input and calls the kit with it; gets a fresh scratch folder
    error: type | tuple              # the error it must raise
    words: tuple[str, ...]           # each must appear in the message


def raised_by_the_kit(e:BaseException) -> bool:
    "Whether the innermost frame of `e`'s traceback is core_models' own code."
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PKG)


def outcome(c:Case, tmp:Path, quiet:tuple=()) -> tuple[str, str]:
    "('clear' | 'unclear' | 'silent', why) for one case, run in `tmp` (warnings of the classes in `quiet` ignored)."
    cwd = os.getcwd()
    os.chdir(tmp)  # a case that writes (or a payload that would) does so in its scratch folder
    try:
        with warnings.catch_warnings():
            for w in quiet: warnings.simplefilter('ignore', w)
            c.make(tmp)
    except Exception as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if not isinstance(e, c.error): return 'unclear', f'raised {type(e).__name__}, expected {c.error}: {msg}'
        missing = [w for w in c.words if w not in msg]
        if missing: return 'unclear', f'message lacks {missing}: {msg}'
        if not raised_by_the_kit(e): return 'unclear', f'raised from {traceback.extract_tb(e.__traceback__)[-1].filename}, not by core_models: {msg}'
        return 'clear', msg
    finally: os.chdir(cwd)
    return 'silent', 'accepted without an error'
