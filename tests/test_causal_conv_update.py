"""causal_conv_update: one streaming step of causal_conv (state shifted in place), CPU and CUDA.

Against the float64 direct-sum reference (fft_tensor.reference.causal_conv_update_reference), against
causal_conv of the whole sequence when a sequence is fed in pieces, with strided u and state, in place,
opcheck, torch.compile, CUDA graph replay and every bad input."""
import pytest
import torch

import fft_tensor
from conftest import DEVICES, assert_rejected_eagerly_and_traced, rel_err, requires_cuda, tolerance
from fft_tensor.reference import causal_conv_reference, causal_conv_update_reference

ops = torch.ops.fft_tensor

# (B, D, T, S, Lk): T = 1 (a generation step), T > S, S > Lk - 1, Lk = 1, odd sizes, taps past 32 lanes
SHAPES = [(1, 1, 1, 0, 1), (2, 3, 1, 7, 8), (3, 5, 4, 127, 128), (1, 7, 16, 127, 128), (2, 4, 40, 9, 10),
          (1, 3, 3, 50, 33), (2, 66, 1, 200, 129)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make(B, D, T, S, Lk, device, dtype=torch.float32, with_skip=True):
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    u = torch.randn(B, D, T, device=device).to(dtype)
    state = torch.randn(B, D, S, device=device).to(dtype).to(acc)  # past inputs: u's dtype, held exactly
    k = torch.randn(D, Lk, device=device, dtype=acc) / Lk**0.5
    skip = torch.randn(D, device=device, dtype=acc) if with_skip else None
    return u, state, k, skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=["B{}-D{}-T{}-S{}-Lk{}".format(*s) for s in SHAPES])
@pytest.mark.parametrize("with_skip", [True, False])
def test_values(shape, dtype, device, with_skip):
    u, state, k, skip = make(*shape, device, dtype, with_skip)
    y_ref, state_ref = causal_conv_update_reference(u, state, k, skip)
    ptr = state.data_ptr()
    y = fft_tensor.causal_conv_update(u, state, k, skip)
    assert y.shape == u.shape and y.dtype == dtype and y.is_contiguous() and y.device == u.device
    assert rel_err(y, y_ref) <= tolerance(y_ref, dtype)
    assert state.data_ptr() == ptr
    assert torch.equal(state.double(), state_ref)  # the shift is a copy: exact


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streaming_equals_causal_conv(device, dtype):
    """Feeding a sequence in pieces from a zero state gives causal_conv of the whole sequence."""
    B, D, L, Lk = 2, 5, 300, 33
    x = torch.randn(B, D, L, device=device).to(dtype)
    k = torch.randn(D, Lk, device=device) / Lk**0.5
    skip = torch.randn(D, device=device)
    exact = causal_conv_reference(x, k, skip)
    state = torch.zeros(B, D, Lk - 1, device=device)
    cuts = sorted(set([0, L] + torch.randint(1, L, (12,)).tolist()))
    pieces = [fft_tensor.causal_conv_update(x[..., a:b], state, k, skip) for a, b in zip(cuts, cuts[1:])]
    y = torch.cat(pieces, dim=-1)
    assert rel_err(y, exact) <= tolerance(exact, dtype)
    assert torch.equal(state, x[..., L - (Lk - 1):].float())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("T", [1, 2])
def test_strided_u_and_state(device, T):
    """u as a transposed (B, T, D) activation, state as a strided slice of a larger buffer (T = 1 is the
    generation step, which the CPU reads in place from a dense state row: same bits either way)."""
    B, D, S, Lk = 3, 37, 20, 17
    u = torch.randn(B, T, D, device=device).transpose(1, 2)
    buffer = torch.randn(B, S + 5, D, device=device)
    state = buffer[:, 3:3 + S].transpose(1, 2)  # (B, D, S), stride(2) = D
    k = torch.randn(2 * D, Lk, device=device)[::2]
    skip = torch.randn(D, 2, device=device)[:, 1]
    assert not (state.is_contiguous() or k.is_contiguous() or skip.is_contiguous())
    assert T == 1 or not u.is_contiguous()  # (a (B, D, 1) view is contiguous whatever its strides)
    y_ref, state_ref = causal_conv_update_reference(u, state, k, skip)
    before = buffer.clone()
    dense_state = state.contiguous()
    y_dense = fft_tensor.causal_conv_update(u, dense_state, k, skip)
    y = fft_tensor.causal_conv_update(u, state, k, skip)
    assert rel_err(y, y_ref) <= 1e-5
    assert torch.equal(y, y_dense) and torch.equal(state, dense_state)
    assert torch.equal(state.double(), state_ref)
    # nothing outside the state's slice was written
    assert torch.equal(buffer[:, :3], before[:, :3]) and torch.equal(buffer[:, 3 + S:], before[:, 3 + S:])


@pytest.mark.parametrize("device", DEVICES)
def test_empty_rows(device):
    u, state, k, skip = make(0, 3, 2, 4, 5, device)
    assert fft_tensor.causal_conv_update(u, state, k, skip).shape == (0, 3, 2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("shape", [(1, 7, 16, 127, 128), (2, 3, 1, 7, 8), (2, 5, 40, 9, 10)],
                         ids=["window-T16", "loop-T1", "loop-T40"])
def test_gate(shape, dtype, device):
    """gate fuses the mixer's y * silu(gate): the same bits as the unfused torch expression on the
    op's own y (both kernels, a strided gate), and the float64 reference within rounding."""
    u, state, k, skip = make(*shape, device, dtype)
    B, D, T = u.shape
    gate = torch.randn(B, T, 2 * D, device=device).to(dtype).transpose(1, 2)[:, D:]  # strided, as a view
    state0, state_plain = state.clone(), state.clone()
    y_plain = fft_tensor.causal_conv_update(u, state_plain, k, skip)
    z = fft_tensor.causal_conv_update(u, state, k, skip, gate=gate)
    assert z.shape == u.shape and z.dtype == dtype and z.is_contiguous()
    assert torch.equal(state, state_plain)
    assert torch.equal(z, y_plain * torch.nn.functional.silu(gate))
    y_ref, _ = causal_conv_update_reference(u, state0, k, skip)
    z_ref = y_ref * torch.nn.functional.silu(gate.double())
    assert rel_err(z, z_ref) <= 3 * tolerance(z_ref, dtype) + (0 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    samples = [make(2, 3, 1, 7, 8, device), make(1, 5, 4, 9, 3, device, torch.bfloat16, False),
               make(2, 33, 3, 127, 128, device)]
    if device == "cpu":
        samples.append(make(2, 3, 2, 5, 6, device, torch.float64))
    for args in samples:
        torch.library.opcheck(ops.causal_conv_update.default, args)
    u, state, k, skip = make(2, 7, 16, 127, 128, device, torch.bfloat16)
    torch.library.opcheck(ops.causal_conv_update.default, (u, state, k, skip, torch.randn_like(u)))


@pytest.mark.parametrize("device", DEVICES)
def test_compile(device):
    def step(u, state, k, skip, w):
        return fft_tensor.causal_conv_update(u * w, state, k, skip).sin()

    compiled = torch.compile(step, fullgraph=True)
    u, state, k, skip = make(2, 9, 1, 15, 16, device)
    w = torch.randn_like(u)
    state_eager = state.clone()
    for _ in range(3):  # the state advances the same way in both
        u = torch.randn_like(u)
        torch.testing.assert_close(compiled(u, state, k, skip, w), step(u, state_eager, k, skip, w))
        torch.testing.assert_close(state, state_eager)


@requires_cuda
def test_cuda_graph_replay():
    """The state is updated in place, so a recorded step replays against the advancing state."""
    B, D, S, Lk = 1, 64, 127, 128
    x = torch.randn(B, D, 40, device="cuda")
    k = torch.randn(D, Lk, device="cuda") / Lk**0.5
    skip = torch.randn(D, device="cuda")
    state = torch.zeros(B, D, S, device="cuda")
    static_u = torch.zeros(B, D, 1, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fft_tensor.causal_conv_update(static_u, state.clone(), k, skip)  # warm-up off the graph
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = fft_tensor.causal_conv_update(static_u, state, k, skip)
    outs = []
    for t in range(x.shape[-1]):
        static_u.copy_(x[..., t:t + 1])
        graph.replay()
        outs.append(static_y.clone())
    assert rel_err(torch.cat(outs, -1), causal_conv_reference(x, k, skip)) <= 1e-5


@requires_cuda
def test_cuda_matches_cpu_long_state():
    """A long state (S = 5000) and T = 3: the CUDA warp loop and the CPU loop agree."""
    u, state, k, skip = make(2, 6, 3, 5000, 4097, "cpu")
    state_cuda = state.cuda()
    y_cuda = fft_tensor.causal_conv_update(u.cuda(), state_cuda, k.cuda(), skip.cuda())
    y_cpu = fft_tensor.causal_conv_update(u, state, k, skip)
    assert rel_err(y_cuda, y_cpu) <= 1e-5
    assert torch.equal(state_cuda.cpu(), state)


def _f(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = {
    "u rank": (lambda: (_f(2, 3), _f(2, 3, 4), _f(3, 5), None), "expected u of shape"),
    "u integer": (lambda: (torch.ones(2, 3, 1, dtype=torch.int64), _f(2, 3, 4), _f(3, 5), None), "dtype"),
    "u complex": (lambda: (_f(2, 3, 1).to(torch.complex64), _f(2, 3, 4), _f(3, 5), None), "dtype"),
    "T zero": (lambda: (_f(2, 3, 0), _f(2, 3, 4), _f(3, 5), None), "T >= 1"),
    "k rank": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(3), None), "expected k of shape"),
    "k dtype": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(3, 5, dtype=torch.bfloat16), None), "expected k of dtype"),
    "D mismatch": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(4, 5), None), "k.shape\\[0\\] == u.shape\\[1\\]"),
    "no taps": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(3, 0), None), "at least one tap"),
    "state shape": (lambda: (_f(2, 3, 1), _f(2, 4, 4), _f(3, 5), None), "expected state of shape"),
    "state short": (lambda: (_f(2, 3, 1), _f(2, 3, 3), _f(3, 5), None), "S >= Lk - 1 = 4"),
    "state dtype": (lambda: (_f(2, 3, 1), _f(2, 3, 4, dtype=torch.bfloat16), _f(3, 5), None), "expected state of dtype"),
    "skip shape": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(3, 5), _f(4)), "expected skip of shape"),
    "skip dtype": (lambda: (_f(2, 3, 1), _f(2, 3, 4), _f(3, 5), _f(3, dtype=torch.float64)), "expected skip of dtype"),
    "gate shape": (lambda: (_f(2, 3, 2), _f(2, 3, 4), _f(3, 5), None, _f(2, 3, 1)), "expected gate of u's shape"),
    "gate dtype": (lambda: (_f(2, 3, 2), _f(2, 3, 4), _f(3, 5), None, _f(2, 3, 2, dtype=torch.bfloat16)),
                   "expected gate of u's dtype"),
    # written in place: rows sharing memory would overwrite each other's past inputs
    "state expanded": (lambda: (_f(2, 3, 1), _f(1, 3, 4).expand(2, 3, 4), _f(3, 5), None), "do not share memory"),
}


def test_inference_only():
    u, state, k, skip = _f(2, 3, 2), _f(2, 3, 4), _f(3, 5).requires_grad_(), None
    with pytest.raises(RuntimeError, match="causal_conv_update: inference only .* k requires grad"):
        fft_tensor.causal_conv_update(u, state, k, skip)
    with pytest.raises(RuntimeError, match="causal_conv_update: inference only .* state requires grad"):
        fft_tensor.causal_conv_update(u, state.clone().requires_grad_(), k.detach(), skip)  # written in place
    with torch.no_grad():
        fft_tensor.causal_conv_update(u, state, k, skip)


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs(name):
    make_args, match = BAD[name]
    assert_rejected_eagerly_and_traced(fft_tensor.causal_conv_update, make_args, match)


@requires_cuda
def test_devices_differ_cuda():
    u, state, k, skip = make(1, 3, 1, 4, 5, "cuda")
    with pytest.raises(RuntimeError, match="state on the same device as u"):
        fft_tensor.causal_conv_update(u, state.cpu(), k, skip)
    with pytest.raises(RuntimeError, match="k on the same device as u"):
        fft_tensor.causal_conv_update(u, state, k.cpu(), skip)
