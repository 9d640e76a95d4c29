"""The child process of the crash test: appends batches until it is killed, and after each
append_batch returns prints `ack <batch> <segment> <byte>`. The parent kills it with SIGKILL.

`batches` is shared with the parent, which replays it to know every record's bytes.
"""

import random
import sys
from collections.abc import Iterator

from storage.journal import Journal


def batches(round_: int, seed: int) -> Iterator[list[bytes]]:
    rng = random.Random(seed)
    batch = 0
    while True:
        size = rng.choice((1, 1, 2, 5, 20, 100))
        yield [
            f"{round_}:{batch}:{i}:".encode() + bytes([65 + i % 26]) * rng.randrange(300)
            for i in range(size)
        ]
        batch += 1


def main(directory: str, round_: int, seed: int, segment_bytes: int) -> None:
    journal = Journal(directory, writer="rs-a", segment_bytes=segment_bytes)
    print("ready", flush=True)
    for number, batch in enumerate(batches(round_, seed)):
        position = journal.append_batch(batch)
        print(f"ack {number} {position.segment} {position.byte}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
