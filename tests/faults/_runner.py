"""The train task as its own process, the way an Airflow worker runs it: ``python -m tests.faults._runner``.

argv: the pulled dict (JSON) and the settings (JSON). Prints the task's return value
as the last line; logs at INFO so a resumed run says so on stderr.
"""

from __future__ import annotations

import json
import logging
import signal
import sys


def main() -> None:
    from recsys_retrain import cycle
    from recsys_retrain.settings import Settings

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit then fails the write (EFBIG), as a full disk does
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
    pulled, settings = json.loads(sys.argv[1]), Settings(**json.loads(sys.argv[2]))
    print(json.dumps(cycle.train(pulled, settings)))


if __name__ == "__main__":
    main()
