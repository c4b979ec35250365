"""Schemathesis hooks for tests/contract/schemathesis.sh.

Hypothesis replays and shrinks a scenario by sending its requests again, so a
create it replays carries the Idempotency-Key of the first run. keyledger then
does what the contract says, returning the first response (the same key id),
and if that key was deleted in the earlier run, the replay's next step gets a
404 that schemathesis reports as "created resource not found". Each generated
Idempotency-Key is therefore made unique (the map runs again on every replay);
a value that breaks the header's pattern is left as generated, so the refusal
of bad values is still tested. This is a generation hook, not `before_call`: an
edit made just before sending makes schemathesis re-classify the case, which
turned a "missing Authorization" case back into a valid one.
"""

import re
import uuid

import schemathesis

HEADER = "Idempotency-Key"
# API.md: 1-255 visible ASCII characters.
VALID = re.compile(r"[!-~]{1,255}")


@schemathesis.hook
def map_headers(context, headers):
    value = headers.get(HEADER) if isinstance(headers, dict) else None
    if isinstance(value, str) and VALID.fullmatch(value):
        suffix = "." + uuid.uuid4().hex
        headers = {**headers, HEADER: value[: 255 - len(suffix)] + suffix}
    return headers
