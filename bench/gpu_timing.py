"""One GPU timing method for the benchmarks: CUDA-graph replay, median per call."""
from __future__ import annotations


def graph_us(fn, reps: int = 200, replays: int = 7) -> float:
    """Median microseconds per call of fn: reps calls captured in one CUDA graph, replayed `replays`
    times (warm-up on a side stream first, as CUDA-graph capture requires)."""
    import torch
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    for _ in range(3):
        g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b) * 1000 / reps)
    return sorted(ts)[len(ts) // 2]
