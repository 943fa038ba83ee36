"""A Foo client for source_access_test.ts that binds its source address (Deno.connect cannot).

    python3 _bound_client.py SOURCE HOST PORT COUNT [CONNECTIONS]

Opens CONNECTIONS (default 1) connections from SOURCE (an address; `127.0.0.N+` means one more
address of 127.0.0.0/8 per connection, 127.0.1.0 onwards, opened one after another), sends REQ 1
to REQ COUNT on each at once, and reads until every reply came, the proxy closed, or 10 s passed.
Prints one JSON line: replies that were right (ACK n for REQ n, in order), wrong ones, how each
connection ended (ok, eof, reset, timeout) and the seconds from the first send to the last reply.
"""
import json
import socket
import sys
import time

source, host, port, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
connections = int(sys.argv[5]) if len(sys.argv) > 5 else 1
family = socket.AF_INET6 if ":" in host else socket.AF_INET
payload = "".join(f"REQ {n}\n" for n in range(1, count + 1)).encode()


def source_of(i):
    if source != "127.0.0.N+":
        return source
    return f"127.0.{1 + i // 250}.{1 + i % 250}"


def one(sock):
    """Reads COUNT replies from sock; returns (right, wrong, end)."""
    right = wrong = 0
    buf = b""
    expected = 1
    deadline = time.monotonic() + 10
    while right + wrong < count:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except socket.timeout:
            return right, wrong, "timeout"
        except ConnectionResetError:
            return right, wrong, "reset"
        if not data:
            return right, wrong, "eof"
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.decode() == f"ACK {expected}":
                right += 1
            else:
                wrong += 1
            expected += 1
    return right, wrong, "ok"


ends = []
right = wrong = 0
started = time.monotonic()
if source == "127.0.0.N+":
    # One after another: each new address, served and closed.
    for i in range(connections):
        s = socket.socket(family)
        s.bind((source_of(i), 0))
        s.connect((host, port))
        s.sendall(payload)
        r, w, end = one(s)
        s.close()
        right, wrong = right + r, wrong + w
        ends.append(end)
else:
    socks = []
    for i in range(connections):
        s = socket.socket(family)
        s.bind((source, 0))
        s.connect((host, port))
        socks.append(s)
    started = time.monotonic()
    for s in socks:
        try:
            s.sendall(payload)
        except (ConnectionResetError, BrokenPipeError):
            pass
    for s in socks:
        r, w, end = one(s)
        right, wrong = right + r, wrong + w
        ends.append(end)
    for s in socks:
        s.close()
print(json.dumps({
    "right": right,
    "wrong": wrong,
    "ends": ends,
    "seconds": time.monotonic() - started,
}), flush=True)
