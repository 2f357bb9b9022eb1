"""Two costs a worker pays beside its requests (sharing its active users) or on only some of them
(verifying a token it has not seen), measured alone: too small for the HTTP benchmark to see
through its noise, but not for a worker under load.

    python -m bench.micro active-users [--users 200000] [--seen 2800] [--shares 150]
    python -m bench.micro tokens [--tokens 20000] [--repeats 7]

``active-users``: a worker's ``favorites_active_users`` tracker holding ``--users`` users in its
window, seeing ``--seen`` of them (at random) between two shares, as one worker does in two
seconds at 1,400 req/s; then sharing them with the other workers, ``--shares`` times (150: five
minutes). Reports the (wall) time each share takes on the event loop (the mean and the longest: every
request in flight waits for it) and in the thread that writes the file.

``tokens``: ``JwtCodec.verify`` of ``--tokens`` HS256 access tokens it has not seen (the path of
every request of a session new to the worker), then of the same tokens again (remembered), with a
new codec for each of ``--repeats`` rounds; reports the median and the least disturbed round.

Both run on the code on ``PYTHONPATH`` (``src`` of this checkout, or of a ``git worktree`` of an
older version to compare); ``active-users`` also runs on the tracker before shares were appended
(``snapshot`` and a whole-file ``write`` every time).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any


def active_users(args: argparse.Namespace) -> None:
    from favorites.observability.active_users import ActiveUsers, _recent

    rng = random.Random(args.random_seed)
    users = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(args.users)]
    with tempfile.TemporaryDirectory(prefix="favorites-micro-") as directory:
        tracker: Any = ActiveUsers(Path(directory))
        for user in users:
            tracker.seen(user)
        on_loop: list[float] = []
        in_thread: list[float] = []
        for _ in range(args.shares):
            for user in rng.sample(users, args.seen):
                tracker.seen(user)
            started = time.perf_counter()
            # Before shares were appended, the tracker had ``snapshot`` (every user, every time).
            share = tracker.share() if hasattr(tracker, "share") else tracker.snapshot()
            taken = time.perf_counter()
            if share is not None:
                tracker.write(share)
            on_loop.append(taken - started)
            in_thread.append(time.perf_counter() - taken)
        files = sorted(Path(directory).glob("active_users_*.bin"))
        data = files[0].read_bytes() if files else b""
        # As another worker reads it (both versions have this function, for their own format).
        in_file = len(set(_recent(data, time.time() - tracker.window)))
    print(f"{args.users:,} users in the window, {args.seen:,} seen between shares, "
          f"{args.shares} shares")
    print(f"on the event loop per share: mean {1000 * statistics.mean(on_loop):.2f} ms, "
          f"longest {1000 * max(on_loop):.1f} ms")
    print(f"writing per share (a thread): mean {1000 * statistics.mean(in_thread):.2f} ms")
    print(f"time per share in all: {1000 * (sum(on_loop) + sum(in_thread)) / args.shares:.2f} ms; "
          f"file {len(data) / 1e6:.1f} MB; users in it {in_file:,}")


def tokens(args: argparse.Namespace) -> None:
    from bench.common import JWT_AUDIENCE, JWT_ISSUER, JWT_SECRET
    from bench.loadgen import mint_tokens
    from favorites.adapters.tokens.jwt import JwtCodec

    minted = [token.decode() for token in mint_tokens(list(range(args.tokens))).values()]
    new: list[float] = []
    remembered: list[float] = []
    for _ in range(args.repeats):
        codec = JwtCodec(algorithm="HS256", issuer=JWT_ISSUER, audience=JWT_AUDIENCE,
                         ttl_seconds=3600, leeway_seconds=30, secret=JWT_SECRET.encode())
        for figures in (new, remembered):
            started = time.process_time()
            for token in minted:
                codec.verify(token)
            figures.append((time.process_time() - started) / len(minted) * 1e6)
    for label, figures in (("new token", new), ("remembered token", remembered)):
        print(f"verify, {label}: median {statistics.median(figures):.2f} µs, "
              f"min {min(figures):.2f} µs ({args.repeats} rounds of {args.tokens:,})")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.micro",
                                description=(__doc__ or "").split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("active-users", help="the cost of sharing a worker's active users")
    a.add_argument("--users", type=int, default=200_000)
    a.add_argument("--seen", type=int, default=2800)
    a.add_argument("--shares", type=int, default=150)
    a.add_argument("--random-seed", type=int, default=1)
    t = sub.add_parser("tokens", help="the cost of verifying an access token")
    t.add_argument("--tokens", type=int, default=20_000)
    t.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print(f"python -m bench.micro {' '.join(sys.argv[1:])}")
    {"active-users": active_users, "tokens": tokens}[args.what](args)


if __name__ == "__main__":
    main()
