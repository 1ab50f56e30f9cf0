"""The `noderouter` CLI kept warm for the policy lab (run inside a node's namespace).

Each stdin line is a JSON list of arguments; the answer is one JSON line
``{"code": exit code, "stdout": ..., "stderr": ...}``. The commands are the real
click commands of ``bgpd.cli.main`` run in this process (click's CliRunner), so a
call costs the command's own work, not a fresh interpreter importing the CLI: 0.6 s
per call on an idle machine, 5-8 s on the shared one under load, which made the
lab's policy matrix spend most of its time starting Pythons.
"""

from __future__ import annotations

import json
import sys

from click.testing import CliRunner

from bgpd.cli.main import main


def serve() -> None:
    runner = CliRunner()
    print("ready", flush=True)
    for line in sys.stdin:
        args = json.loads(line)
        result = runner.invoke(main, args, catch_exceptions=True)
        stderr = result.stderr
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            stderr += f"{type(result.exception).__name__}: {result.exception}"
        print(json.dumps({"code": result.exit_code, "stdout": result.stdout,
                          "stderr": stderr}), flush=True)


if __name__ == "__main__":
    serve()
