"""`python -m mnist_service.healthcheck`: exit 0 when this container's service is ready.

For Docker's HEALTHCHECK, where the image has no curl: asks /readyz on PORT (default 8000).
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"not ready: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
