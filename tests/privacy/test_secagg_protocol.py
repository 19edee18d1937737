import numpy as np
import pytest

from fedfm.errors import AggregationError, ConfigError
from fedfm.privacy.secagg import (
    FixedPoint,
    InconsistentRequestError,
    NotEnoughSurvivorsError,
    ProtocolError,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    secure_sum,
)
from fedfm.privacy.secagg.messages import EncryptedShare, MaskedInput, RoutedShares, UnmaskRequest
from fedfm.privacy.secagg.simulation import measure_overhead

LENGTH = 3000


def _inputs(n, length=LENGTH, bits=32, seed=0):
    """Integers whose plain sum does not wrap mod 2^bits."""
    rng = np.random.default_rng(seed)
    high = 2**bits // n
    return [rng.integers(0, high, length, dtype=np.uint64).astype(np.uint32) for _ in range(n)]


def _plain_sum(inputs, ids):
    return np.sum([inputs[i] for i in ids], axis=0, dtype=np.uint64)


def _run_to_masked(n, length=64, degree=None, threshold=None):
    """Drive server and clients by hand up to stage 3; returns them and the unmask requests."""
    d = n - 1 if degree is None else degree
    params = SecAggParams(tuple(range(n)), threshold or (d + 1) // 2 + 1, length, degree)
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    keys = server.collect_keys([clients[c].advertise_keys() for c in range(n)])
    routed = server.route_shares([clients[c].share_keys(keys[c]) for c in range(n)])
    zero = np.zeros(length, dtype=np.uint32)
    masked = [clients[c].masked_input(routed[c], zero) for c in range(n)]
    requests = server.collect_masked(masked)
    return params, server, clients, keys, routed, masked, requests


@pytest.mark.parametrize(("n", "degree"), [(3, None), (10, None), (50, None), (24, 8)])
def test_unmasked_sum_equals_the_plaintext_integer_sum(n, degree):
    # Prepare
    inputs = _inputs(n)
    # Execute
    result = secure_sum(inputs, degree=degree)
    # Assert
    assert result.survivors == tuple(range(n))
    assert result.total.dtype == np.uint32
    assert np.array_equal(result.total, _plain_sum(inputs, range(n)))
    assert not result.refused


@pytest.mark.parametrize("bits", [20, 64])
def test_the_sum_is_taken_mod_2_to_the_bits(bits):
    # Prepare: inputs whose sum wraps around
    rng = np.random.default_rng(1)
    dtype = np.uint32 if bits <= 32 else np.uint64
    inputs = [rng.integers(0, 2**bits, LENGTH, dtype=np.uint64).astype(dtype) for _ in range(4)]
    # Execute
    result = secure_sum(inputs, bits=bits)
    # Assert
    expected = np.sum(inputs, axis=0, dtype=np.uint64) & np.uint64(2**bits - 1)
    assert np.array_equal(result.total.astype(np.uint64), expected)


@pytest.mark.parametrize(
    ("n", "degree", "threshold", "dropouts"),
    [
        # complete graph, n - t = 4 clients drop, one at every stage
        (10, None, 6, {1: "advertise", 4: "share_keys", 6: "masked_input", 9: "unmask"}),
        # n - t clients drop, all at one stage each
        (8, None, 5, {0: "masked_input", 3: "masked_input", 5: "masked_input"}),
        (8, None, 5, {0: "unmask", 3: "unmask", 7: "unmask"}),
        (8, None, 5, {2: "advertise", 3: "share_keys", 4: "share_keys"}),
        # SecAgg+: 9 share holders per client, threshold 5: any 4 dropouts are survivable
        (16, 8, 5, {0: "advertise", 5: "share_keys", 10: "masked_input", 15: "unmask"}),
    ],
)
def test_dropouts_at_every_stage_leave_the_survivors_sum_exact(n, degree, threshold, dropouts):
    # Prepare
    inputs = _inputs(n)
    gone = {c for c, stage in dropouts.items() if stage != "unmask"}
    # Execute
    result = secure_sum(inputs, degree=degree, threshold=threshold, dropouts=dropouts)
    # Assert: clients that dropped after sending their masked input are still summed
    assert result.survivors == tuple(c for c in range(n) if c not in gone)
    assert np.array_equal(result.total, _plain_sum(inputs, result.survivors))


@pytest.mark.parametrize(
    "dropouts",
    [
        {0: "advertise", 1: "advertise", 2: "advertise"},
        {0: "share_keys", 1: "masked_input", 2: "masked_input"},
        {0: "unmask", 1: "unmask", 2: "unmask"},
    ],
)
def test_fewer_than_threshold_survivors_fail_with_a_clear_error(dropouts):
    # Prepare: 6 clients, threshold 4, three drop
    inputs = _inputs(6)
    # Execute / Assert: an AggregationError, so the round loop keeps the global state
    with pytest.raises(NotEnoughSurvivorsError, match=r"threshold is 4|threshold = 4") as info:
        secure_sum(inputs, threshold=4, dropouts=dropouts)
    assert isinstance(info.value, AggregationError)


def test_a_failed_server_returns_nothing_afterwards():
    # Prepare: three of five survivors answer, threshold 4
    _params, server, clients, *_, requests = _run_to_masked(5, threshold=4)
    answers = [clients[c].unmask(requests[c]) for c in (0, 1, 2)]
    # Execute
    with pytest.raises(NotEnoughSurvivorsError, match="fewer than threshold = 4 shares"):
        server.unmask(answers)
    # Assert
    assert server.stage_ == "failed"
    with pytest.raises(ProtocolError, match="called in stage 'failed'"):
        server.unmask(answers)


def test_a_masked_vector_looks_uniform():
    # Prepare: three clients whose inputs are all zero (the worst case)
    length = 50_000
    *_, masked, _ = _run_to_masked(3, length=length)
    words = masked[0].masked
    # Execute: chi-square over the 256 values of every byte, and the moments of the words
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = words.nbytes / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    u = words / 2.0**32
    # Assert: df = 255 has mean 255 and std 22.6; 255 + 7 std is p < 1e-8
    assert chi2 < 255 + 7 * 22.6
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / length)
    assert abs(u.var() - 1 / 12) < 0.005
    assert not np.array_equal(masked[0].masked, masked[1].masked)


@pytest.mark.parametrize(
    ("request_", "why"),
    [
        (UnmaskRequest(0, (0, 1, 2, 3), (3, 4)), "both as survivors and as dropped"),
        (UnmaskRequest(0, (0, 1, 2, 3), (4, 99)), "unknown or not neighbours"),
        (UnmaskRequest(0, (0, 1, 2), (3, 4)), "survivors among my neighbours, threshold is 4"),
        (UnmaskRequest(0, (1, 2, 3, 4), (0,)), "lists me as dropped"),
        (UnmaskRequest(0, (0, 1, 2, 3), ()), "neither survivors nor dropped"),
        (UnmaskRequest(1, (0, 1, 2, 3), (4,)), "addressed to client 1"),
    ],
)
def test_client_refuses_an_inconsistent_unmask_request(request_, why):
    # Prepare: five clients through stage 3 (threshold 4); client 0 judges the request
    *_, clients, _keys, _routed, _masked, _requests = _run_to_masked(5, threshold=4)
    # Execute / Assert: refused, and a refused client never answers again
    with pytest.raises(InconsistentRequestError, match=why):
        clients[0].unmask(request_)
    with pytest.raises(ProtocolError, match="called in stage 'done'"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2, 3), (4,)))


def test_client_answers_a_consistent_unmask_request_once():
    # Prepare
    *_, clients, _keys, _routed, _masked, _requests = _run_to_masked(5, threshold=4)
    # Execute
    answer = clients[0].unmask(UnmaskRequest(0, (0, 1, 2, 3), (4,)))
    # Assert: shares of the self-mask seeds of survivors, of the mask key of the dropped
    assert [o for o, _ in answer.mask_shares] == [0, 1, 2, 3]
    assert [o for o, _ in answer.key_shares] == [4]


def test_secagg_plus_client_refuses_a_non_neighbour():
    # Prepare: 8 clients on a ring of degree 2 (3 share holders, threshold 2)
    params, _server, clients, *_, requests = _run_to_masked(8, degree=2, threshold=2)
    stranger = min(set(range(8)) - params.holders(0))
    request = requests[0]
    # Execute / Assert
    with pytest.raises(InconsistentRequestError, match=f"clients \\[{stranger}\\] are unknown"):
        clients[0].unmask(UnmaskRequest(0, (*request.survivors, stranger), request.dropped))


def test_client_refuses_a_forged_key_list_and_tampered_shares():
    # Prepare
    n = 4
    params = SecAggParams(tuple(range(n)), 3, 16)
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    keys = server.collect_keys([clients[c].advertise_keys() for c in range(n)])
    own = keys[0].entries[0]
    forged = type(keys[0])((type(own)(0, own.s_public, own.c_public), *keys[0].entries[1:]))
    # Execute / Assert: the server swapped client 0's own keys
    fresh = SecAggClient(0, params)
    fresh.advertise_keys()
    with pytest.raises(ProtocolError, match="my own keys"):
        fresh.share_keys(forged)
    routed = server.route_shares([clients[c].share_keys(keys[c]) for c in range(n)])
    share = routed[1].shares[0]
    flipped = EncryptedShare(
        share.sender, 1, share.ciphertext[:-1] + bytes([share.ciphertext[-1] ^ 1])
    )
    with pytest.raises(ProtocolError, match="fails authentication"):
        clients[1].masked_input(RoutedShares(1, (flipped,)), np.zeros(16, np.uint32))
    redirected = routed[2].shares[0]  # a share sealed for client 2, handed to client 3
    assert redirected.sender not in (2, 3)
    with pytest.raises(ProtocolError, match="fails authentication"):
        clients[3].masked_input(
            RoutedShares(3, (EncryptedShare(redirected.sender, 3, redirected.ciphertext),)),
            np.zeros(16, np.uint32),
        )


def test_server_drops_clients_whose_messages_break_the_protocol():
    # Prepare
    n = 5
    params = SecAggParams(tuple(range(n)), 3, 16)
    server = SecAggServer(params)
    clients = {c: SecAggClient(c, params) for c in range(n)}
    adverts = [clients[c].advertise_keys() for c in range(n)]
    # Execute: a duplicate, a stranger, then one client sends to too few neighbours
    keys = server.collect_keys([*adverts, adverts[0], type(adverts[0])(77, b"a" * 32, b"b" * 32)])
    shares = [clients[c].share_keys(keys[c]) for c in range(n)]
    shares[4] = type(shares[4])(4, shares[4].shares[:2])
    routed = server.route_shares(shares)
    masked = [clients[c].masked_input(routed[c], np.zeros(16, np.uint32)) for c in range(3)]
    masked.append(MaskedInput(3, np.zeros(15, np.uint32)))
    # Assert
    assert server.rejected_ == {
        0: "sent a second message in one stage",
        77: "is not expected at this stage",
        4: "did not send one share to each neighbour",
    }
    requests = server.collect_masked(masked)
    assert server.rejected_[3] == "masked input is not 16 uint32"
    assert sorted(requests) == [0, 1, 2]
    result = server.unmask([clients[c].unmask(requests[c]) for c in range(3)])
    assert result.survivors == (0, 1, 2) and not result.total.any()


def test_stages_must_run_in_order():
    params = SecAggParams((0, 1, 2), 2, 4)
    client = SecAggClient(0, params)
    with pytest.raises(ProtocolError, match="called in stage 'new'"):
        client.unmask(UnmaskRequest(0, (0, 1), (2,)))
    with pytest.raises(ProtocolError, match="not in this secure sum's cohort"):
        SecAggClient(5, params)
    with pytest.raises(ProtocolError, match="called in stage 'shares'"):
        server = SecAggServer(params)
        server.collect_keys([SecAggClient(c, params).advertise_keys() for c in range(3)])
        server.collect_keys([])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"client_ids": (1,), "threshold": 1}, "2 to"),
        ({"client_ids": (1, 1, 2), "threshold": 2}, "distinct"),
        ({"client_ids": tuple(range(10)), "threshold": 3, "degree": 3}, "even"),
        (
            {"client_ids": tuple(range(10)), "threshold": 2, "degree": 4},
            r"threshold must be in \[3, 5\]",
        ),
        ({"client_ids": tuple(range(10)), "threshold": 11}, r"\[6, 10\]"),
    ],
)
def test_bad_parameters_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SecAggParams(vector_length=8, **kwargs)


def test_neighbour_graph_is_regular_symmetric_and_seeded():
    # Prepare
    a = SecAggParams(tuple(range(30)), 4, 8, 6, graph_seed=b"a")
    b = SecAggParams(tuple(range(30)), 4, 8, 6, graph_seed=b"b")
    # Assert
    for c in range(30):
        assert len(a.neighbours(c)) == 6 and c not in a.neighbours(c)
        assert all(c in a.neighbours(v) for v in a.neighbours(c))
    assert any(a.neighbours(c) != b.neighbours(c) for c in range(30))


def test_float_inputs_are_encoded_and_decoded():
    # Prepare: torch and numpy inputs, some values beyond the clip range
    import torch

    rng = np.random.default_rng(3)
    floats = [rng.normal(0, 0.5, 500) for _ in range(5)]
    fp = FixedPoint.for_cohort(1.0, 5)
    inputs = [torch.tensor(floats[0]), *floats[1:]]
    # Execute
    result = secure_sum(inputs, fixed_point=fp, dropouts={2: "masked_input"})
    # Assert
    expected = np.sum([np.clip(floats[c], -1, 1) for c in (0, 1, 3, 4)], axis=0)
    assert result.value is not None
    assert np.max(np.abs(result.value - expected)) <= fp.error_bound(4, stochastic=True)
    with pytest.raises(ConfigError, match="overflow"):
        secure_sum(floats, fixed_point=FixedPoint(1.0, 2**31))
    with pytest.raises(ValueError, match="need fixed_point"):
        secure_sum(floats)


@pytest.mark.parametrize(("dropouts", "alive"), [(None, 4), ({1: "masked_input"}, 3)])
def test_measure_overhead_reports_both_sides_of_the_same_sum(dropouts, alive):
    # Execute
    out = measure_overhead(4, 2000, dropouts=dropouts)
    # Assert
    assert out.bytes_plain == alive * 2000 * 4
    assert out.bytes_secure_up > out.bytes_plain
    assert out.seconds_secure > 0 and out.seconds_plain > 0
    assert out.max_abs_error <= out.error_bound
    assert (out.degree, out.threshold) == (3, 3)
