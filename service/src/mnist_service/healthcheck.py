"""`python -m mnist_service.healthcheck`: exit 0 when this container's service is ready.

For Docker's HEALTHCHECK, where the image has no curl: asks /readyz on the service's PORT.
"""

import sys
import urllib.error
import urllib.request

from mnist_service.settings import Settings


def main() -> int:
    try:
        url = f"http://127.0.0.1:{Settings.from_env().port}/readyz"
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (ValueError, urllib.error.URLError, OSError) as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
