"""Gemma 4 MoE routing is one fused Triton kernel on CUDA (patch gemma4-fused-moe-routing).

SGLang 0.5.12.post1 routes every Gemma 4 MoE layer in ``Gemma4MoE.routing_function`` with
torch.topk + softmax + a per_expert_scale gather + a multiply + two casts: several CUDA
kernels per layer, ~5.8% of decode GPU time in the profile of the original report
(pyc96/sglang#10; vLLM's equivalent kernel: vllm-project/vllm#39083). With the patch,
routing_function hands CUDA fp16/bf16/fp32 logits to one launch of
``sglang.srt.layers.gemma4_fused_ops.gemma4_fused_routing`` (upstream added that function
there in 0.5.13) and keeps the torch path for everything else. The kernel must give the
torch path's results: the same experts in the same order (up to ties between equal
logits) and the same weights.

CPU tests run the real kernel under the Triton interpreter and stand in only the device
query ``Tensor.is_cuda``. GPU tests (marker ``gpu``) compare bit for bit on CUDA and count
kernel launches.
"""

import itertools
import os
import subprocess
import sys
import tempfile
import types

import pytest
import torch

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _gemma4_causal():
    import sglang.srt.models.gemma4_causal as gemma4_causal

    return gemma4_causal


def _fused_ops():
    """The patched kernel module; a clear failure (not a collection error) when unpatched."""
    import sglang.srt.layers.gemma4_fused_ops as fused_ops

    assert hasattr(fused_ops, "gemma4_fused_routing"), (
        "patched SGLang provides the fused Gemma 4 routing kernel "
        "sglang.srt.layers.gemma4_fused_ops.gemma4_fused_routing"
    )
    return fused_ops


def _routing_function(per_expert_scale):
    """``Gemma4MoE.routing_function`` exactly as the tree defines it.

    routing_function is a closure that Gemma4MoE.__init__ builds over
    ``per_expert_scale`` (the module's nn.Parameter). Building a Gemma4MoE also builds the
    expert weights and needs TP groups and global server args, so most tests bind the
    tree's own code object to the module's globals and a per_expert_scale tensor of the
    dtype they need: the function __init__ would create. One test builds a real layer
    and checks that it registers this code (gemma4_moe fixture).
    """
    gemma4_causal = _gemma4_causal()
    codes = [
        const
        for const in gemma4_causal.Gemma4MoE.__init__.__code__.co_consts
        if isinstance(const, types.CodeType) and const.co_name == "routing_function"
    ]
    assert len(codes) == 1, "Gemma4MoE.__init__ defines one routing_function closure"
    code = codes[0]
    assert code.co_freevars == ("per_expert_scale",), (
        "routing_function closes over per_expert_scale only; "
        f"this test needs updating for free variables {code.co_freevars}"
    )
    return types.FunctionType(
        code,
        gemma4_causal.__dict__,
        "routing_function",
        None,
        (types.CellType(per_expert_scale),),
    )


def _route(routing_function, gating_output, topk):
    # The call SGLang's select_experts makes (keyword arguments).
    return routing_function(
        hidden_states=torch.empty(gating_output.shape[0], 8, dtype=gating_output.dtype),
        gating_output=gating_output,
        topk=topk,
        renormalize=True,
    )


class _ReportsCuda(torch.Tensor):
    """A CPU tensor whose ``is_cuda`` says True: the one device query routing makes."""

    @property
    def is_cuda(self):
        return True


class _KernelSpy:
    """Stands in for the kernel entry point in gemma4_causal; records its calls."""

    def __init__(self):
        self.calls = []
        self.result = None

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        num_tokens = args[0].shape[0]
        topk = args[2] if len(args) > 2 else kwargs["topk"]
        self.result = (
            torch.full((num_tokens, topk), 0.5, dtype=torch.float32),
            torch.zeros((num_tokens, topk), dtype=torch.int32),
        )
        return self.result


def _distinct_logits(num_tokens, num_experts, dtype, generator):
    """Logits without ties: each row a permutation of multiples of 1/8.

    |values| <= E/16 <= 16 with 1/8 steps need <= 8 significant bits, so they are exact in
    bf16, fp16 and fp32 and the top-k choice is unambiguous in every dtype.
    """
    rows = [torch.randperm(num_experts, generator=generator) for _ in range(num_tokens)]
    return ((torch.stack(rows) - num_experts // 2).float() / 8).to(dtype)


def _ulp_distance(a, b, dtype=torch.float32):
    """Largest distance in units in the last place of ``dtype`` (a, b exact in dtype)."""
    int_type = torch.int32 if dtype == torch.float32 else torch.int16
    ia = a.to(dtype).contiguous().view(int_type).long()
    ib = b.to(dtype).contiguous().view(int_type).long()
    return (ia - ib).abs().max().item()


def _assert_same_routing(weights, ids, ref_weights, ref_ids, gating_output):
    """Same experts in the same order up to ties; bit-identical weights per expert."""
    assert weights.dtype == torch.float32, "routing weights are fp32"
    assert ids.dtype == torch.int32, "routing ids are int32"
    assert weights.shape == ref_weights.shape and ids.shape == ref_ids.shape
    logits = gating_output.float()
    assert torch.equal(
        logits.gather(1, ids.long()), logits.gather(1, ref_ids.long())
    ), "the fused kernel selects the same logits as torch.topk, in the same order"
    sorted_ids = ids.sort(dim=-1).values
    assert bool((sorted_ids[:, 1:] != sorted_ids[:, :-1]).all()), "no expert twice"
    same = ids == ref_ids
    assert torch.equal(
        weights[same], ref_weights[same]
    ), "fused routing weights are bit-identical to the torch path"
    for row in torch.nonzero(~same.all(dim=-1)).flatten().tolist():
        ref = dict(zip(ref_ids[row].tolist(), ref_weights[row].tolist()))
        for expert, weight in zip(ids[row].tolist(), weights[row].tolist()):
            if expert in ref:
                assert weight == ref[expert], (
                    f"row {row}: expert {expert} gets the torch path's weight "
                    f"{ref[expert]}, not {weight}"
                )


def _case_id(case):
    dtype, num_tokens, (num_experts, topk) = case
    name = str(dtype).replace("torch.", "").replace("float", "fp").replace("bfp", "bf")
    return f"{name}-T{num_tokens}-E{num_experts}-K{topk}"


# ---------------------------------------------------------------------------
# CPU: the real kernel under the Triton interpreter
# ---------------------------------------------------------------------------

# Runs in a fresh interpreter: TRITON_INTERPRET=1 only takes effect for kernels (including
# triton.language's own) decorated after it is set, and it must not switch this process's
# kernels (the gpu tests) to the interpreter. The child loads the tree's kernel module file
# (the one this process imports, see _fused_ops) and needs only torch and triton.
_INTERPRETER_CHILD = """
import importlib.util, sys, torch
path, inputs, outputs = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("gemma4_fused_ops_interpreted", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
cases = torch.load(inputs)
results = {
    name: module.gemma4_fused_routing(logits, scale, topk)
    for name, (logits, scale, topk) in cases.items()
}
torch.save(results, outputs)
"""

INTERPRETER_CASES = list(
    itertools.product(
        [torch.float32, torch.bfloat16, torch.float16],
        [1, 4],
        [(128, 8), (96, 6), (16, 1), (256, 32)],
    )
)


def _interpreter_inputs():
    cases = {}
    for dtype, num_tokens, (num_experts, topk) in INTERPRETER_CASES:
        generator = torch.Generator().manual_seed(
            num_tokens * 1000 + num_experts + topk
        )
        logits = _distinct_logits(num_tokens, num_experts, dtype, generator)
        # Powers of two: the scale product is exact, so only the softmax rounds.
        exponents = torch.randint(-1, 2, (num_experts,), generator=generator)
        scale = torch.pow(2.0, exponents.float()).to(dtype)
        cases[(dtype, num_tokens, num_experts, topk)] = (logits, scale, topk)
    generator = torch.Generator().manual_seed(7)
    cases["fp32 scale"] = (
        _distinct_logits(3, 128, torch.bfloat16, generator),
        torch.rand(128, generator=generator) * 3 + 0.5,
        8,
    )
    ties = torch.zeros(2, 128, dtype=torch.bfloat16)
    ties[1, 100] = 1.0
    cases["ties"] = (ties, torch.ones(128, dtype=torch.bfloat16), 8)
    return cases


# Weights may differ from the CPU torch path by at most this many ulp of the logit dtype
# (bit-exactness is what the gpu tests check; on CPU the two sides round differently):
# fp32: torch's CPU softmax uses its own vectorised exp and multiplies by 1/sum, the
#   interpreter uses numpy's exp and divides: a few ulp;
# bf16: Triton's interpreter rounds fp32 -> bf16 toward zero where torch (and CUDA)
#   round to nearest even: one ulp at the softmax output (the cases' power-of-two scales
#   make the product exact);
# fp16: the interpreter rounds like torch; a slightly different fp32 softmax value can
#   still tip one rounding.
_INTERPRETER_ULPS = {torch.float32: 8, torch.bfloat16: 1, torch.float16: 1}
# An fp32 scale is rounded to bf16 and multiplied in bf16 (two more roundings): up to one
# ulp of each factor plus the product's own rounding, <= 5 bf16 ulp.
_INTERPRETER_ULPS_FP32_SCALE = 5

_INTERPRETED = {}


def _interpreted(case):
    """(inputs, kernel outputs) of one case, all cases computed in one child process."""
    if not _INTERPRETED:
        fused_ops = _fused_ops()
        inputs = _interpreter_inputs()
        with tempfile.TemporaryDirectory() as tmp:
            inputs_path = os.path.join(tmp, "inputs.pt")
            outputs_path = os.path.join(tmp, "outputs.pt")
            torch.save(inputs, inputs_path)
            child = subprocess.run(
                [sys.executable, "-c", _INTERPRETER_CHILD, fused_ops.__file__]
                + [inputs_path, outputs_path],
                env=dict(os.environ, TRITON_INTERPRET="1"),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert child.returncode == 0, (
                "gemma4_fused_routing runs under TRITON_INTERPRET=1 on CPU tensors; "
                f"the interpreter run failed:\n{child.stderr[-4000:]}"
            )
            outputs = torch.load(outputs_path)
        for name, value in inputs.items():
            _INTERPRETED[name] = (value, outputs[name])
    return _INTERPRETED[case]


@pytest.mark.parametrize(
    "dtype,num_tokens,experts_topk",
    INTERPRETER_CASES,
    ids=[_case_id(case) for case in INTERPRETER_CASES],
)
def test_interpreted_kernel_matches_torch_routing_path(dtype, num_tokens, experts_topk):
    """The fused kernel equals the torch path of Gemma4MoE.routing_function.

    Reference: the tree's own routing_function on CPU tensors, which takes the torch path
    (topk -> softmax -> * per_expert_scale[ids] -> fp32/int32). Expected: identical expert
    ids in identical order, fp32 weights and int32 ids, and weights equal to the torch
    path's up to how the two CPU implementations round (_INTERPRETER_ULPS).
    """
    num_experts, topk = experts_topk
    (gating_output, per_expert_scale, _), (weights, ids) = _interpreted(
        (dtype, num_tokens, num_experts, topk)
    )
    ref_weights, ref_ids = _route(
        _routing_function(per_expert_scale), gating_output, topk
    )

    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    assert weights.shape == ids.shape == (num_tokens, topk)
    assert torch.equal(ids, ref_ids), "the kernel picks torch.topk's experts, in order"
    ulps = _ulp_distance(weights, ref_weights, dtype)
    assert ulps <= _INTERPRETER_ULPS[dtype], (
        f"{dtype} weights equal the torch path's within "
        f"{_INTERPRETER_ULPS[dtype]} ulp, got {ulps}"
    )


def test_interpreted_kernel_casts_fp32_scale_like_torch_path():
    """A fp32 per_expert_scale with bf16 logits is rounded to bf16 first, as in torch."""
    (gating_output, per_expert_scale, topk), (weights, ids) = _interpreted("fp32 scale")
    ref_weights, ref_ids = _route(
        _routing_function(per_expert_scale), gating_output, topk
    )
    assert torch.equal(ids, ref_ids), "the kernel picks torch.topk's experts, in order"
    ulps = _ulp_distance(weights, ref_weights, torch.bfloat16)
    assert ulps <= _INTERPRETER_ULPS_FP32_SCALE, (
        "weights use per_expert_scale rounded to bf16 like the torch path, within "
        f"{_INTERPRETER_ULPS_FP32_SCALE} bf16 ulp; got {ulps}"
    )


def test_interpreted_kernel_breaks_ties_towards_lower_expert_id():
    """Equal logits go to the lower expert id first (torch.topk on CUDA does the same)."""
    (gating_output, per_expert_scale, topk), (weights, ids) = _interpreted("ties")
    assert ids[0].tolist() == list(range(8)), "all-equal logits pick experts 0..7"
    assert ids[1].tolist() == [100] + list(range(7)), "then the lowest ids among ties"
    ref_weights, _ = _route(_routing_function(per_expert_scale), gating_output, topk)
    ulps = _ulp_distance(weights, ref_weights, torch.bfloat16)
    assert ulps <= _INTERPRETER_ULPS[torch.bfloat16], (
        "tied experts get the torch path's weights, within "
        f"{_INTERPRETER_ULPS[torch.bfloat16]} bf16 ulp; got {ulps}"
    )


# ---------------------------------------------------------------------------
# CPU: routing_function dispatch (device query stood in)
# ---------------------------------------------------------------------------


def _install_kernel_spy(monkeypatch):
    gemma4_causal = _gemma4_causal()
    assert hasattr(gemma4_causal, "gemma4_fused_routing"), (
        "Gemma4MoE.routing_function calls the fused kernel entry point "
        "gemma4_fused_routing (imported into sglang.srt.models.gemma4_causal)"
    )
    spy = _KernelSpy()
    monkeypatch.setattr(gemma4_causal, "gemma4_fused_routing", spy)
    return spy


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.float32],
    ids=["bf16", "fp16", "fp32"],
)
def test_routing_function_dispatches_cuda_logits_to_fused_kernel(monkeypatch, dtype):
    """On CUDA, each routing call is exactly one call of the fused kernel, whose result
    routing_function returns unchanged."""
    spy = _install_kernel_spy(monkeypatch)
    per_expert_scale = torch.rand(128, dtype=dtype)
    routing_function = _routing_function(per_expert_scale)

    for call in range(1, 4):
        gating_output = torch.randn(5, 128, dtype=dtype).as_subclass(_ReportsCuda)
        result = _route(routing_function, gating_output, 8)
        assert len(spy.calls) == call, (
            "one fused-kernel call per routing call on CUDA logits, "
            f"got {len(spy.calls)} after {call} routing calls"
        )
        args, kwargs = spy.calls[-1]
        bound = dict(zip(("gating_output", "per_expert_scale", "topk"), args), **kwargs)
        assert bound["gating_output"] is gating_output, "kernel gets the router logits"
        assert (
            bound["per_expert_scale"] is per_expert_scale
        ), "kernel gets the layer's per_expert_scale"
        assert bound["topk"] == 8, "kernel gets top_k_experts"
        assert result is spy.result, "routing_function returns the kernel's output"


@pytest.fixture
def gemma4_moe(sglang_cpu_dist, monkeypatch, tmp_path):
    """A real, tiny Gemma4MoE layer built on CPU (16 experts, top-4)."""
    from transformers import Gemma4TextConfig

    import sglang.srt.server_args as server_args

    config = Gemma4TextConfig(
        hidden_size=64,
        num_experts=16,
        top_k_experts=4,
        moe_intermediate_size=32,
        enable_moe_block=True,
        architectures=["Gemma4ForCausalLM"],
    )
    config.save_pretrained(tmp_path)  # ServerArgs reads the model's config.json
    monkeypatch.setattr(
        server_args,
        "_global_server_args",
        server_args.ServerArgs(model_path=str(tmp_path), device="cpu"),
    )
    return _gemma4_causal().Gemma4MoE(hidden_size=64, layer_id=0, config=config)


def test_gemma4_moe_layer_routes_cuda_logits_through_fused_kernel_once(
    monkeypatch, gemma4_moe
):
    """A Gemma4MoE layer's TopK step (select_experts -> routing_function) on CUDA logits is
    one fused-kernel call with the layer's own per_expert_scale; the tests above bind the
    same routing_function code."""
    spy = _install_kernel_spy(monkeypatch)
    registered = gemma4_moe.topk.topk_config.custom_routing_function
    assert registered.__code__ is (
        _routing_function(gemma4_moe.per_expert_scale).__code__
    ), "Gemma4MoE registers routing_function as its TopK custom routing function"

    hidden_states = torch.randn(5, 64)
    router_logits = torch.randn(5, 16).as_subclass(_ReportsCuda)
    topk_output = gemma4_moe.topk(hidden_states, router_logits)

    assert len(spy.calls) == 1, "one fused-kernel call per MoE layer routing step"
    args, kwargs = spy.calls[0]
    bound = dict(zip(("gating_output", "per_expert_scale", "topk"), args), **kwargs)
    assert bound["gating_output"] is router_logits, "kernel gets the router logits"
    assert (
        bound["per_expert_scale"] is gemma4_moe.per_expert_scale
    ), "kernel gets the layer's per_expert_scale parameter"
    assert bound["topk"] == 4, "kernel gets config.top_k_experts"
    assert topk_output.topk_weights is spy.result[0], "TopK uses the kernel's weights"


def _assert_torch_path(monkeypatch, spy, routing_function, gating_output, topk):
    topk_calls = []
    real_topk = torch.topk

    def recording_topk(*args, **kwargs):
        topk_calls.append(args)
        return real_topk(*args, **kwargs)

    monkeypatch.setattr(torch, "topk", recording_topk)
    weights, ids = _route(routing_function, gating_output, topk)
    monkeypatch.setattr(torch, "topk", real_topk)
    assert spy.calls == [], "the fused kernel is not used here"
    assert len(topk_calls) == 1, "routing falls back to the torch path (torch.topk)"
    assert weights.dtype == torch.float32 and ids.dtype == torch.int32
    plain_logits = gating_output.as_subclass(torch.Tensor)
    expected_ids = real_topk(plain_logits, k=topk, dim=-1).indices
    assert torch.equal(
        ids.as_subclass(torch.Tensor).long(), expected_ids
    ), "the torch path's expert ids"


def test_routing_function_keeps_torch_path_off_cuda(monkeypatch):
    """CPU logits take the torch path; the fused kernel is not called."""
    spy = _install_kernel_spy(monkeypatch)
    per_expert_scale = torch.rand(128, dtype=torch.bfloat16)
    gating_output = torch.randn(5, 128, dtype=torch.bfloat16)
    _assert_torch_path(
        monkeypatch, spy, _routing_function(per_expert_scale), gating_output, 8
    )


@pytest.mark.parametrize(
    "case", ["fp64-logits", "fp64-scale", "topk-33", "strided-experts"]
)
def test_routing_function_keeps_torch_path_for_unsupported_inputs(monkeypatch, case):
    """CUDA inputs the kernel does not support keep the torch path."""
    spy = _install_kernel_spy(monkeypatch)
    logits_dtype, scale_dtype, topk = torch.bfloat16, torch.bfloat16, 8
    if case == "fp64-logits":
        logits_dtype = torch.float64
    elif case == "fp64-scale":
        scale_dtype = torch.float64
    elif case == "topk-33":
        topk = 33
    gating_output = torch.randn(5, 128, dtype=logits_dtype)
    if case == "strided-experts":
        gating_output = torch.randn(128, 5, dtype=logits_dtype).t()
    gating_output = gating_output.as_subclass(_ReportsCuda)
    per_expert_scale = torch.rand(128, dtype=scale_dtype)
    _assert_torch_path(
        monkeypatch, spy, _routing_function(per_expert_scale), gating_output, topk
    )


# ---------------------------------------------------------------------------
# GPU: bit-exact against the torch path, one launch per call
# ---------------------------------------------------------------------------


def _cuda_gpu_present():
    """A real CUDA device (a stood-in device query alone does not count)."""
    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    try:
        torch.empty(1, device="cuda")
    except Exception:
        return False
    return True


_HAS_CUDA = _cuda_gpu_present()
_NO_CUDA = "needs a CUDA GPU; none is usable here"

GPU_CASES = list(
    itertools.product(
        [torch.float32, torch.bfloat16, torch.float16],
        [1, 7, 64, 1024],
        [(128, 8), (64, 4), (256, 8), (96, 6), (128, 1), (512, 32)],
    )
)


@pytest.mark.gpu
@pytest.mark.skipif(not _HAS_CUDA, reason=_NO_CUDA)
@pytest.mark.parametrize(
    "dtype,num_tokens,experts_topk",
    GPU_CASES,
    ids=[_case_id(case) for case in GPU_CASES],
)
def test_gpu_routing_function_matches_torch_path(
    monkeypatch, dtype, num_tokens, experts_topk
):
    """On CUDA, patched routing equals the torch path bit for bit (ids up to ties).

    Reference: the same routing_function with the fused kernel switched off.
    """
    _fused_ops()
    gemma4_causal = _gemma4_causal()
    num_experts, topk = experts_topk
    torch.manual_seed(num_tokens * 1000 + num_experts + topk)
    gating_output = torch.randn(num_tokens, num_experts, device="cuda").to(dtype)
    per_expert_scale = (torch.rand(num_experts, device="cuda") * 2).to(dtype)
    routing_function = _routing_function(per_expert_scale)

    weights, ids = _route(routing_function, gating_output, topk)
    with monkeypatch.context() as patch:
        patch.setattr(
            gemma4_causal, "gemma4_fused_routing_supported", lambda *args: False
        )
        ref_weights, ref_ids = _route(routing_function, gating_output, topk)
    _assert_same_routing(weights, ids, ref_weights, ref_ids, gating_output)


@pytest.mark.gpu
@pytest.mark.skipif(not _HAS_CUDA, reason=_NO_CUDA)
@pytest.mark.parametrize("num_tokens", [1, 64, 2048])
def test_gpu_routing_is_one_kernel_launch(num_tokens):
    """The whole routing step of a Gemma 4 MoE layer is one CUDA kernel launch."""
    from torch.profiler import ProfilerActivity, profile

    _fused_ops()
    gating_output = torch.randn(num_tokens, 128, device="cuda", dtype=torch.bfloat16)
    per_expert_scale = torch.rand(128, device="cuda", dtype=torch.bfloat16)
    routing_function = _routing_function(per_expert_scale)
    _route(routing_function, gating_output, 8)  # compile outside the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _route(routing_function, gating_output, 8)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) == 1, f"one kernel per routing call, got {kernels}"
