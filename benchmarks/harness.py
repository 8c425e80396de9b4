"""Shared benchmark harness: the main loop of every bench_*.py (`run_family`), timing, providers,
bandwidth, metadata, output.

Times are medians (with p20 / p80) of repeated runs after warm-up: `time.perf_counter` on the
CPU, CUDA events on a GPU with inputs rotated through more memory than L2 holds. A provider that
is not installed is reported as skipped, never faked.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).parent / "results"
# tests/reference.py holds the PyTorch compositions the benchmarks compare with (the tests'
# oracles): `import reference` in a bench_*.py finds it.
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))


def loss_arguments(
    argv,
    description: str,
    *,
    dtypes: str | None = "fp32,bf16",
    modes: str = "fwd,bwd,fwd+bwd",
    shapes_help: str = "e.g. 4096x32000,256x1000",
    cpu_reps: int = 5,
    cuda_reps: int = 50,
    arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """The command line every benchmark shares (plus a family's own, added by `arguments`).
    shapes comes back as a list of int tuples (None when not given), modes as a list, reps
    filled in for the device."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a subset for a quick look")
    parser.add_argument("--dtypes", default=dtypes)
    parser.add_argument("--modes", default=modes)
    parser.add_argument("--providers", default=None, help="comma-separated subset")
    parser.add_argument("--shapes", default=None, help=shapes_help)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--out", default=None, help="directory for the JSON results")
    if arguments is not None:
        arguments(parser)
    args = parser.parse_args(argv)
    args.reps = args.reps or (cuda_reps if args.device == "cuda" else cpu_reps)
    if args.shapes:
        args.shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    args.modes = args.modes.split(",")
    return args


def keep_providers(found: dict, subset: str | None) -> dict:
    """found restricted to the comma-separated names in subset (all when None)."""
    if not subset:
        return found
    keep = set(subset.split(","))
    return {name: fn for name, fn in found.items() if name in keep}


def announce(device: str, note: str = "") -> float:
    """Measures the copy bandwidth now and prints the run's header line; returns the bandwidth."""
    copy_gbps = copy_bandwidth_gbps(device)
    print(f"# {device_name(device)}, torch {torch.__version__}, copy {copy_gbps:.1f} GB/s{note}")
    return copy_gbps


def past_deadline() -> bool:
    """True once the wall-clock deadline in LOGITOPS_BENCH_DEADLINE (Unix seconds) has passed:
    the GPU check sets it so a slow run ends with its results so far instead of being killed."""
    deadline = os.environ.get("LOGITOPS_BENCH_DEADLINE")
    return deadline is not None and time.time() > float(deadline)


@dataclass
class Measurement:
    op: str
    provider: str
    mode: str
    shape: str
    dtype: str
    median_ms: float | None
    p20_ms: float | None = None
    p80_ms: float | None = None
    bytes_moved: int | None = None
    gbps: float | None = None
    fraction_of_copy: float | None = None
    ratio_vs_torch: float | None = None
    skipped: str | None = None
    extra: dict = field(default_factory=dict)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def metadata(device: str) -> dict:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        sha = "unknown"
    return {
        "device": device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_sha": sha,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def time_fn(
    fn: Callable[[], object],
    device: str,
    *,
    warmup: int = 2,
    reps: int = 10,
    max_seconds: float = 20.0,
) -> tuple[float, float, float]:
    """(median, p20, p80) in milliseconds."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    start_all = time.perf_counter()
    if device == "cuda":
        for _ in range(reps):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end))
            if time.perf_counter() - start_all > max_seconds and len(samples) >= 3:
                break
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
            if time.perf_counter() - start_all > max_seconds and len(samples) >= 3:
                break
    samples.sort()
    q = statistics.quantiles(samples, n=5) if len(samples) >= 2 else [samples[0]] * 4
    return statistics.median(samples), q[0], q[3]


def time_backward(
    setup: Callable[[], torch.Tensor],
    device: str,
    *,
    warmup: int = 2,
    reps: int = 10,
    max_seconds: float = 20.0,
) -> tuple[float, float, float]:
    """(median, p20, p80) ms of `loss.backward()` alone, the forward `setup()` run untimed."""
    for _ in range(warmup):
        setup().backward()
    samples: list[float] = []
    start_all = time.perf_counter()
    for _ in range(reps):
        loss = setup()
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            loss.backward()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            loss.backward()
            samples.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start_all > max_seconds and len(samples) >= 3:
            break
    samples.sort()
    q = statistics.quantiles(samples, n=5) if len(samples) >= 2 else [samples[0]] * 4
    return statistics.median(samples), q[0], q[3]


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mb(run: Callable[[], object], device: str) -> float | None:
    """Peak memory one call of `run` adds over what was allocated before it: CUDA's allocator
    statistics on a GPU; on Linux CPUs the process's peak RSS, reset first through
    /proc/self/clear_refs (as a fresh subprocess would start), else None."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    base = _status_kib("VmRSS")
    run()
    peak = _status_kib("VmHWM")
    return None if base is None or peak is None else (peak - base) / 1024


def progress(items, desc: str):
    """A tqdm progress bar on stderr when tqdm is installed, else the items as they are."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, leave=False, file=sys.stderr)


def copy_bandwidth_gbps(device: str, nbytes: int = 512 << 20) -> float:
    """Read + write GB/s of a same-device copy of `nbytes`, measured now."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    median, _, _ = time_fn(lambda: dst.copy_(src), device, warmup=2, reps=10)
    return 2 * nbytes / (median * 1e-3) / 1e9


def rotating_inputs(make: Callable[[], object], one_input_bytes: int, device: str) -> list:
    """Enough copies of an input that cycling through them defeats the GPU's L2 cache."""
    if device != "cuda":
        return [make()]
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20)
    count = max(1, min(8, -(-4 * l2 // max(1, one_input_bytes))))
    return [make() for _ in range(count)]


def cycle(items: list) -> Callable[[], object]:
    state = {"i": 0}

    def nxt():
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return item

    return nxt


def bench_loss(
    op: str,
    provider: str,
    fn: Callable[..., torch.Tensor],
    make_input: Callable[[], torch.Tensor],
    other_args: tuple,
    *,
    shape: str,
    dtype: str,
    device: str,
    modes: list[str],
    reps: int,
    bytes_by_mode: dict[str, int],
    clone_input: bool = False,
) -> list[Measurement]:
    """Times `fn(input, *other_args)` (a scalar loss) forward and forward+backward.

    Inputs rotate through several copies on a GPU so that they are not served from L2. With
    clone_input, each call gets a private copy (for peers that overwrite their input).
    """
    one = make_input()
    inputs = rotating_inputs(make_input, one.numel() * one.element_size(), device)
    del one
    out = []
    for mode in modes:
        if past_deadline():
            out.append(
                Measurement(op, provider, mode, shape, dtype, None, skipped="deadline passed")
            )
            continue
        leaves = cycle([x.detach().requires_grad_() for x in inputs])
        nxt = cycle(inputs)

        def forward(nxt=nxt):
            with torch.no_grad():
                fn(nxt(), *other_args)

        def loss_of_next(leaves=leaves):
            x = leaves()
            x.grad = None
            return fn(x.clone() if clone_input else x, *other_args)

        def training_step(loss_of_next=loss_of_next):
            loss_of_next().backward()

        limit = 3.0 if device == "cuda" else 20.0
        try:
            if mode == "fwd":
                median, p20, p80 = time_fn(forward, device, reps=reps, max_seconds=limit)
            elif mode == "bwd":
                median, p20, p80 = time_backward(loss_of_next, device, reps=reps, max_seconds=limit)
            else:
                median, p20, p80 = time_fn(training_step, device, reps=reps, max_seconds=limit)
            m = Measurement(
                op,
                provider,
                mode,
                shape,
                dtype,
                median,
                p20,
                p80,
                bytes_moved=bytes_by_mode.get(mode),
            )
            if mode == "fwd+bwd":
                peak = peak_extra_mb(training_step, device)
                if peak is not None:
                    m.extra["peak_extra_mb"] = peak
        except torch.OutOfMemoryError:
            m = Measurement(op, provider, mode, shape, dtype, None, skipped="out of memory")
        except Exception as exc:  # a peer failing must not stop the run
            m = Measurement(
                op,
                provider,
                mode,
                shape,
                dtype,
                None,
                skipped=f"{type(exc).__name__}: {str(exc)[:80]}",
            )
        out.append(m)
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def skipped(
    op: str, provider: str, why: str, *, shape: str, dtype: str, modes: list[str]
) -> list[Measurement]:
    return [Measurement(op, provider, mode, shape, dtype, None, skipped=why) for mode in modes]


def finish(
    results: list[Measurement],
    copy_gbps: float,
    baseline_provider: str | dict[str, str] | None = "torch",
) -> None:
    """Fills bandwidth, fraction of copy and (unless baseline_provider is None) the speed-up over
    that provider (or, for a dict, over the op's provider) measured in the same run."""

    def baseline_of(op: str) -> str | None:
        if isinstance(baseline_provider, dict):
            return baseline_provider.get(op)
        return baseline_provider

    baseline = {
        (m.op, m.mode, m.shape, m.dtype): m.median_ms
        for m in results
        if m.provider == baseline_of(m.op) and m.median_ms
    }
    for m in results:
        if m.median_ms and m.bytes_moved:
            m.gbps = m.bytes_moved / (m.median_ms * 1e-3) / 1e9
            m.fraction_of_copy = m.gbps / copy_gbps
        base = baseline.get((m.op, m.mode, m.shape, m.dtype))
        if baseline_of(m.op) is not None and m.median_ms and base:
            m.ratio_vs_torch = base / m.median_ms


def print_table(results: list[Measurement]) -> None:
    """speedup: the baseline's median over this provider's, same op / mode / shape / dtype, same
    run (PyTorch eager for the losses, transformers' warper chain for filtering and sampling).
    peak MB: memory a forward+backward adds (CUDA allocator peak, or peak RSS on the CPU)."""
    header = (
        f"{'op':<16}{'mode':<10}{'shape':<16}{'dtype':<8}{'provider':<24}"
        f"{'median ms':>11}{'p20-p80':>17}{'GB/s':>8}{'%copy':>7}{'speedup':>9}{'peak MB':>9}"
    )
    print(header)
    print("-" * len(header))
    for m in results:
        prefix = f"{m.op:<16}{m.mode:<10}{m.shape:<16}{m.dtype:<8}{m.provider:<24}"
        if m.skipped:
            print(f"{prefix}  skipped: {m.skipped}")
            continue
        spread = f"{m.p20_ms:.2f}-{m.p80_ms:.2f}"
        gbps = f"{m.gbps:.1f}" if m.gbps else "-"
        frac = f"{100 * m.fraction_of_copy:.0f}" if m.fraction_of_copy else "-"
        ratio = f"{m.ratio_vs_torch:.2f}" if m.ratio_vs_torch else "-"
        peak = m.extra.get("peak_extra_mb")
        peak = f"{peak:.0f}" if peak is not None else "-"
        print(f"{prefix}{m.median_ms:>11.3f}{spread:>17}{gbps:>8}{frac:>7}{ratio:>9}{peak:>9}")


def write_json(
    name: str,
    device: str,
    results: list[Measurement],
    copy_gbps: float,
    out_dir: Path | None = None,
) -> Path:
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = metadata(device)
    stamp = meta["date"][:10]
    slug = meta["device_name"].replace(" ", "_").replace("(", "").replace(")", "").replace("/", "_")
    path = out_dir / f"{stamp}-{name}-{device}-{slug}.json"
    payload = {"meta": meta, "copy_gbps": copy_gbps, "results": [asdict(m) for m in results]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)  # a reader (or a run killed mid-write) never sees half a file
    return path


def checkpoint(
    name: str,
    device: str,
    results: list[Measurement],
    copy_gbps: float,
    out_dir: Path | None = None,
    baseline_provider: str | dict[str, str] | None = "torch",
) -> Path:
    """Writes the results so far (what `write_json` will write at the end, less any figures a
    script adds last), so that a run killed at a deadline keeps every measurement it finished."""
    finish(results, copy_gbps, baseline_provider)
    return write_json(name, device, results, copy_gbps, out_dir)


# --- the main loop of every benchmark script --------------------------------------------------

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Inputs:
    """One op's inputs at one shape and dtype: `make_input()` builds the timed (differentiated)
    input, called as fn(input, *args, **kwargs); bytes_by_mode is the minimal traffic per mode."""

    make_input: Callable[[], torch.Tensor]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    bytes_by_mode: dict[str, int] = field(default_factory=dict)


@dataclass
class Family:
    """What a benchmark script declares; `run_family` does the rest.

    providers(device) -> {op: {provider: fn, or a string saying why it is skipped}};
    inputs(op, shape, dtype, device) -> Inputs; shapes(args) -> the default shapes for
    args.device / args.quick (--shapes overrides them). dtypes: the default --dtypes
    (quick_dtypes under --quick when given). baseline: the provider each speed-up is measured
    against (one name, or one per op). clone_input: providers that overwrite their input get a
    copy per call. arguments adds the family's own options; context(args) wraps the run (a
    process group ...); report(results) adds figures before the table is printed."""

    name: str
    description: str
    providers: Callable[[str], dict[str, dict[str, object]]]
    inputs: Callable[[str, tuple, torch.dtype, str], Inputs]
    shapes: Callable[[argparse.Namespace], list[tuple[int, ...]]]
    dtypes: str = "fp32,bf16"
    quick_dtypes: str | None = None
    modes: str = "fwd,bwd,fwd+bwd"
    shapes_help: str = "e.g. 4096x32000,256x1000"
    cpu_reps: int = 5
    cuda_reps: int = 50
    baseline: str | dict[str, str] = "torch"
    clone_input: frozenset[str] = frozenset()
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    context: Callable[[argparse.Namespace], contextlib.AbstractContextManager] | None = None
    report: Callable[[list[Measurement]], None] | None = None
    note: Callable[[argparse.Namespace], str] | None = None


def _measurements(family: Family, args) -> Iterator[list[Measurement]]:
    """Shapes x dtypes x ops x providers: the measurements of each provider in turn."""
    device, modes = args.device, args.modes
    dtype_names = args.dtypes or (family.quick_dtypes if args.quick else None) or family.dtypes
    table = family.providers(device)
    for shape in progress(args.shapes or family.shapes(args), "shapes"):
        label = "x".join(str(v) for v in shape)
        for dname in dtype_names.split(","):
            dtype = DTYPES[dname]
            for op, found in table.items():
                found = keep_providers(found, args.providers)
                inputs = family.inputs(op, shape, dtype, device) if found else None
                for name, fn in found.items():
                    if isinstance(fn, str):
                        yield skipped(op, name, fn, shape=label, dtype=dname, modes=modes)
                        continue
                    if name.startswith("torch.compile"):
                        # A fresh cache per shape: otherwise dynamo's recompile limit (8) is hit
                        # across shapes and modes, and it silently falls back to eager.
                        torch._dynamo.reset()
                    print(f"  {op} {name} {label} {dname} ...", file=sys.stderr, flush=True)
                    yield bench_loss(
                        op,
                        name,
                        functools.partial(fn, **inputs.kwargs) if inputs.kwargs else fn,
                        inputs.make_input,
                        inputs.args,
                        shape=label,
                        dtype=dname,
                        device=device,
                        modes=modes,
                        reps=args.reps,
                        bytes_by_mode=inputs.bytes_by_mode,
                        clone_input=name in family.clone_input,
                    )
                    for value in inputs.args:  # a differentiable operand (a head's weight)
                        if isinstance(value, torch.Tensor):
                            value.grad = None
                    gc.collect()


def run_family(family: Family, argv=None) -> list[Measurement]:
    """The main of every benchmark script: parses the command line, times every provider of
    every op over the shapes x dtypes, checkpoints the JSON after each provider, fills bandwidth
    and speed-ups, prints the table and writes benchmarks/results/<date>-<name>-<device>-*.json
    (or --out). Returns the measurements."""
    args = loss_arguments(
        argv,
        family.description,
        dtypes=None,
        modes=family.modes,
        shapes_help=family.shapes_help,
        cpu_reps=family.cpu_reps,
        cuda_reps=family.cuda_reps,
        arguments=family.arguments,
    )
    device = args.device
    results: list[Measurement] = []
    started = time.perf_counter()
    context = family.context(args) if family.context else contextlib.nullcontext()
    with context:
        copy_gbps = announce(device, family.note(args) if family.note else "")
        for measured in _measurements(family, args):
            results += measured
            checkpoint(family.name, device, results, copy_gbps, args.out, family.baseline)
    finish(results, copy_gbps, family.baseline)
    if family.report:
        family.report(results)
    print_table(results)
    path = write_json(family.name, device, results, copy_gbps, args.out)
    print(f"# {len(results)} results in {time.perf_counter() - started:.0f} s -> {path}")
    return results
