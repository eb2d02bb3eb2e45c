"""Network namespaces as pods for tests: the product's implementation (steps.localgroup.netns).

`PodNetwork` (bridge namespace, one namespace per pod with LWS names, hosts files, `unshare --uts`
hostnames, idempotent cleanup) lives in steps/localgroup/netns.py; tests import it from here.
Below: a streaming client meant to run inside a namespace (`python -m tests.support.netns stream`).
"""

from __future__ import annotations

import time

from steps.localgroup.netns import Pod, PodNetwork

__all__ = ["Pod", "PodNetwork", "stream_generate"]


# --- a streaming client, run inside a namespace: python -m tests.support.netns stream URL TEXT N ---


def stream_generate(url: str, text: str, max_tokens: int, timeout: float = 60.0) -> None:
    """POST to Triton's generate_stream (SSE) and print one JSON line per event, then a final line."""
    import json
    import urllib.request

    body = json.dumps(
        {"text_input": text, "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    ).encode()
    request = urllib.request.Request(
        f"http://{url}/v2/models/ensemble/generate_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    print(json.dumps({"t": time.time(), **event}), flush=True)
    except Exception as exc:  # report any failure as data for the test to assert on
        print(json.dumps({"t": time.time(), "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return
    print(json.dumps({"t": time.time(), "done": True}), flush=True)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 5 or sys.argv[1] != "stream":
        sys.exit("usage: python -m tests.support.netns stream HOST:PORT TEXT MAX_TOKENS")
    stream_generate(sys.argv[2], sys.argv[3], int(sys.argv[4]))
