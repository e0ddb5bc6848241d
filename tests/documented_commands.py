"""How the suite runs each shell command of the README and the documentation (tests/test_docs_contract.py).

Every command of a ```bash block has an entry here; a page that gains a command without one fails the suite. The
value says how it runs:
- ``CI``: .ci/run runs it as typed (the README's install and test commands, marked ``<!-- ci: ROLE -->``);
- ``Run(...)``: the contract test runs it as typed, with the defaults a user gets (trackers, progress bars, workers),
  in the page's order in a scratch copy of the checkout; ``shrink`` appends flags that only shrink data or steps;
- ``Covered(test, why)``: a named test runs it, where it needs something a scratch folder cannot give (a mocked Hub).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Run:
    shrink: str = ""  # flags appended to the command: data and step counts only
    env: dict[str, str] = field(default_factory=dict)  # documented environment variables
    expect: str = ""  # a text the command's output must contain
    timeout: int = 600


@dataclass(frozen=True)
class Covered:
    test: str  # tests/<file>.py::<function>
    why: str


CI = "ci"

COMMANDS: dict[str, Run | Covered | str] = {}
