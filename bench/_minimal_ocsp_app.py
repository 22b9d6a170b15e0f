"""The peer "minimal uvicorn app answering OCSP from a pre-signed cache" (../shared/PEERS.md).

Run by bench/ocsp.py in the same run as vouch: ``python bench/_minimal_ocsp_app.py PORT PATH
FILE`` serves FILE's bytes at PATH from a dict, with uvicorn's usual fast settings (uvloop,
httptools, no access log). It is what a team would write first; vouch has to beat it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn

CONTENT_TYPE = b"application/ocsp-response"


def make_app(responses: dict[str, bytes]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        der = responses.get(scope["path"])
        if der is None:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(der))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": der})

    return app


def main() -> None:
    port, path, file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    app = make_app({path: file.read_bytes()})
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
