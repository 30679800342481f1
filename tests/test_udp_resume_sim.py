"""UDP resume on virtual time (testing/sim.py): an upload over a lossy, delayed
link is cut (the client vanishes, its session lives on at the server) at every
chunk boundary and at seeded random offsets, then resumed by the same transfer:
the server takes its partial back from the dead session, the new session moves
only the bytes after the last whole chunk it journaled, and the committed file is
the source, verified end to end."""

from __future__ import annotations

import random

import pytest

from ftransfer.checksum import CHUNK_BYTES, ZERO_DIGEST, TreeHasher, digest_bytes, prefix_digest
from ftransfer.proto.udp.packets import Accept, Operation, Resumption
from ftransfer.testing.sim import LinkConfig, Simulation

SIZE = 4 * CHUNK_BYTES + 777
DATA = random.Random(21).randbytes(SIZE)
ID = bytes(range(16))
DIGESTS = [digest_bytes(DATA[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i in range(4)]
LINK = LinkConfig(rate=50e6, delay=0.010, loss=0.01)


class Plan:
    """A client's side of a resumable upload that has read ``have`` chunks (its
    record), as client/resume.py's UploadPlan, without the files."""

    def __init__(self, have: int, digests: list[bytes] = DIGESTS) -> None:
        self.digests = digests
        offset = have * CHUNK_BYTES
        first = digests[0] if have else ZERO_DIGEST
        self.offer = Resumption(offset=offset, transfer_id=ID, digest=first)
        self.started: int | None = None

    def begin(self, accept: Accept) -> tuple[int, TreeHasher | None]:
        got = accept.resume
        assert got is not None  # the server answers the extension
        count = got.offset // CHUNK_BYTES
        assert got.offset <= self.offer.offset  # never more than offered
        if prefix_digest(self.digests[:count]) != got.digest:
            return -1, None
        self.started = got.offset
        return got.offset, TreeHasher(chunks=self.digests[:count])


def held(sim: Simulation) -> int:
    """Bytes the server's partial holds (journaled or not)."""
    return max((len(p.data) for p in sim.store.partials.values()), default=0)


def cut_then_resume(seed: int, cut_at: int) -> tuple[Simulation, Plan, int]:
    sim = Simulation(seed=seed, up=LINK, down=LINK, give_up_s=30.0)
    first = sim.run(Operation.PUT, "f", DATA, resume=Plan(0), cut=lambda: held(sim) >= cut_at)
    assert first.cut and "f" not in sim.files  # nothing half-visible
    journaled = held(sim) // CHUNK_BYTES * CHUNK_BYTES
    plan = Plan(4)  # the client read (and recorded) more than the server got
    second = sim.run(Operation.PUT, "f", DATA, resume=plan)
    assert second.code == 0, second.message
    return sim, plan, journaled


@pytest.mark.parametrize("chunks", [1, 2, 3, 4])
def test_a_cut_at_each_chunk_boundary_resumes_there(chunks: int) -> None:
    sim, plan, journaled = cut_then_resume(seed=chunks, cut_at=chunks * CHUNK_BYTES)
    assert journaled >= chunks * CHUNK_BYTES
    assert plan.started == journaled  # nothing the server had is sent again
    assert sim.files["f"] == DATA
    assert sim.store.partials == {}  # the commit took the partial


@pytest.mark.parametrize("seed", range(5))
def test_a_cut_at_a_random_offset_resumes_at_the_chunk_before(seed: int) -> None:
    cut_at = random.Random(seed).randrange(1, SIZE)
    sim, plan, journaled = cut_then_resume(seed=100 + seed, cut_at=cut_at)
    assert plan.started == journaled >= cut_at // CHUNK_BYTES * CHUNK_BYTES
    assert sim.files["f"] == DATA


def test_another_first_chunk_is_sent_whole() -> None:
    """A source whose first chunk is not the partial's (it changed): the server
    holds nothing for it and the upload moves every byte."""
    sim = Simulation(seed=7, up=LINK, down=LINK, give_up_s=30.0)
    sim.run(Operation.PUT, "f", DATA, resume=Plan(0), cut=lambda: held(sim) >= 2 * CHUNK_BYTES)
    plan = Plan(4, digests=[digest_bytes(b"x"), *DIGESTS[1:]])
    done = sim.run(Operation.PUT, "f", DATA, resume=plan)
    assert done.code == 0 and plan.started == 0 and sim.files["f"] == DATA


def test_a_prefix_that_differs_ends_the_request_then_a_fresh_one_sends_all() -> None:
    """The server's chunks after the first are not the client's (its record
    says otherwise): the client refuses the offset (ResumeRefused) before a
    byte moves, and a fresh request sends everything."""
    sim = Simulation(seed=8, up=LINK, down=LINK, give_up_s=30.0)
    sim.run(Operation.PUT, "f", DATA, resume=Plan(0), cut=lambda: held(sim) >= 3 * CHUNK_BYTES)
    refused = sim.run(
        Operation.PUT, "f", DATA, resume=Plan(4, digests=[*DIGESTS[:1], bytes(16), *DIGESTS[2:]])
    )
    assert refused.code == 31 and "f" not in sim.files
    fresh = Plan(0)
    done = sim.run(Operation.PUT, "f", DATA, resume=fresh)
    assert done.code == 0 and fresh.started == 0 and sim.files["f"] == DATA
