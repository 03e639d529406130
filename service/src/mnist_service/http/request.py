"""The request the inference routes read: werkzeug's, less two of its costs on the hot path.

werkzeug parses an empty query string into a new MultiDict and reads a body through a LimitedStream
in chunks; under load the two cost ~15 % of a one-image request's own CPU (bench/README.md, "Cost per
request"). A body always has a Content-Length here (body_limit.py gives a chunked one its own), so it
is read in one call, with werkzeug's answers kept: 413 over MAX_BODY_BYTES, 400 when the client
goes away before all of it has come.
"""

from __future__ import annotations

from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wrappers import Request

NO_ARGS: ImmutableMultiDict = ImmutableMultiDict()


class InferenceRequest(Request):
    @cached_property
    def args(self) -> ImmutableMultiDict:
        return super().args if self.environ.get("QUERY_STRING") else NO_ARGS

    def body(self) -> bytes:
        """The whole body, once."""
        length = self.content_length
        if length is None:
            return self.get_data(cache=False)
        if self.max_content_length is not None and length > self.max_content_length:
            raise RequestEntityTooLarge()
        data = self.environ["wsgi.input"].read(length) if length else b""
        if len(data) < length:
            raise ClientDisconnected()
        return data
