"""Health check for compose: exit 0 when a URL answers 2xx, else 1.

The slim base image has no curl; the standard library is enough and adds
nothing to the image.

    python /opt/moderation/docker/http_ok.py http://localhost:8080/api/v2/monitor/health
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: http_ok.py URL", file=sys.stderr)
        return 2
    try:
        with urllib.request.urlopen(argv[1], timeout=10) as response:  # noqa: S310 (fixed local URL)
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{argv[1]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
