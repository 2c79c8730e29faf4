"""fastnorm-bench --models: the normalisation layers of published models, end
to end, in eval mode, against the same layers in PyTorch and ONNX Runtime.

Each model is the sequence of its norm layers as its published
configuration places them, with the input shape each one sees in one
inference pass (batch 1 unless named): the time of the whole sequence is what
a CPU inference pipeline spends in normalisation per pass.  Every layer gets
an input of its own (in the model, a convolution or attention sits between
two norms); the inputs are made once and each implementation reads the same
values.

Implementations:
  fastnorm      the fastnorm layers, eval mode, `layer(x)`;
  torch         the torch.nn modules, eval mode, under no_grad;
  onnxruntime   one ONNX graph holding every norm node of the sequence (its
                inputs and outputs are the graph's, bound to preallocated
                NumPy buffers: no copy, no allocation per run), one session
                call: BatchNormalization, InstanceNormalization,
                LayerNormalization, GroupNormalization (opset 21), RMSNorm as
                ONNX Runtime's SimplifiedLayerNormalization (the kernel its
                Llama graphs use).
fastnorm and torch outputs are freed as they go, as a model consumes them.
Samples are interleaved as in the layer rows (fastnorm.bench.measure).
"""
import sys
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Norm:
    """One norm layer of a model and the input it sees."""
    kind: str           # "bn", "in", "ln", "rms", "gn"
    shape: tuple        # its input
    features: int       # channels (bn, in, gn) or the normalised length (ln, rms)
    groups: int = 0     # gn
    eps: float = 1e-5


def resnet50(batch=1):
    """torchvision ResNet-50 (v1.5: the stride on the 3x3 conv), 224x224:
    53 BatchNorm2d."""
    seq = [Norm("bn", (batch, 64, 112, 112), 64)]
    res, cin = 56, 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for i in range(blocks):
            stride = 2 if i == 0 and width != 64 else 1
            out = res // stride
            seq += [Norm("bn", (batch, width, res, res), width),
                    Norm("bn", (batch, width, out, out), width),
                    Norm("bn", (batch, 4 * width, out, out), 4 * width)]
            if i == 0:
                seq.append(Norm("bn", (batch, 4 * width, out, out), 4 * width))
            res, cin = out, 4 * width
    return seq


def bert_base(seq_len=128):
    """BERT-base: embeddings LayerNorm and two per layer, 12 layers, 768,
    eps 1e-12."""
    return [Norm("ln", (1, seq_len, 768), 768, eps=1e-12)] * 25


def llama7b(tokens=1):
    """Llama-7B: RMSNorm(4096, eps 1e-6) twice per layer of 32, and the
    final one; tokens=1 is a decode step, more a prefill."""
    return [Norm("rms", (1, tokens, 4096), 4096, eps=1e-6)] * 65


def vit_b16():
    """ViT-B/16 at 224x224: 197 tokens of 768, two LayerNorms (eps 1e-6)
    per layer of 12 and the final one."""
    return [Norm("ln", (1, 197, 768), 768, eps=1e-6)] * 25


def convnext_tiny():
    """ConvNeXt-T at 224x224: LayerNorm over channels in channels-last
    blocks (depths 3, 3, 9, 3; dims 96-768), the stem's and the
    downsampling layers' LayerNorm, the head's (eps 1e-6)."""
    seq = [Norm("ln", (1, 56, 56, 96), 96, eps=1e-6)]
    res = 56
    for i, (dim, depth) in enumerate(((96, 3), (192, 3), (384, 9), (768, 3))):
        seq += [Norm("ln", (1, res, res, dim), dim, eps=1e-6)] * depth
        if i < 3:
            seq.append(Norm("ln", (1, res, res, dim), dim, eps=1e-6))   # downsample
            res //= 2
    seq.append(Norm("ln", (1, 768), 768, eps=1e-6))
    return seq


def sd15_unet(latent=64):
    """Stable Diffusion 1.5's UNet on a 64x64 latent: GroupNorm(32) twice per
    resnet block (eps 1e-5), and per transformer block one GroupNorm (eps
    1e-6) and three LayerNorms over the channels of its tokens."""
    seq = []

    def resnet(cin, cout, r):
        seq.extend([Norm("gn", (1, cin, r, r), cin, 32), Norm("gn", (1, cout, r, r), cout, 32)])

    def attn(c, r):
        seq.append(Norm("gn", (1, c, r, r), c, 32, eps=1e-6))
        seq.extend([Norm("ln", (1, r * r, c), c)] * 3)

    chans, r, skips = (320, 640, 1280, 1280), latent, [320]
    cin = 320
    for i, c in enumerate(chans):                       # down blocks
        for _ in range(2):
            resnet(cin, c, r)
            if i < 3:
                attn(c, r)
            cin = c
            skips.append(c)
        if i < 3:
            r //= 2
            skips.append(c)
    resnet(1280, 1280, r)                               # mid block
    attn(1280, r)
    resnet(1280, 1280, r)
    prev = 1280
    for i, c in enumerate(reversed(chans)):             # up blocks
        for _ in range(3):
            resnet(prev + skips.pop(), c, r)
            if i > 0:
                attn(c, r)
            prev = c
        if i < 3:
            r *= 2
    seq.append(Norm("gn", (1, 320, r, r), 320, 32))      # conv_norm_out
    return seq


def style_transfer(size=256):
    """The fast neural style transfer network (Johnson et al. 2016, as in
    PyTorch's examples) at 256x256: affine InstanceNorm2d after each of its
    15 convolutions."""
    s = size
    seq = [Norm("in", (1, 32, s, s), 32), Norm("in", (1, 64, s // 2, s // 2), 64),
           Norm("in", (1, 128, s // 4, s // 4), 128)]
    seq += [Norm("in", (1, 128, s // 4, s // 4), 128)] * 10
    seq += [Norm("in", (1, 64, s // 2, s // 2), 64), Norm("in", (1, 32, s, s), 32)]
    return seq


MODELS = {
    "resnet50": ("ResNet-50", lambda: resnet50(1)),
    "resnet50-b32": ("ResNet-50, batch 32", lambda: resnet50(32)),
    "bert-base": ("BERT-base, seq 128", lambda: bert_base(128)),
    "llama7b-decode": ("Llama-7B decode step", lambda: llama7b(1)),
    "llama7b-prefill": ("Llama-7B prefill, 512 tokens", lambda: llama7b(512)),
    "vit-b16": ("ViT-B/16", vit_b16),
    "convnext-t": ("ConvNeXt-T", convnext_tiny),
    "sd15-unet": ("SD 1.5 UNet, 64x64 latent", sd15_unet),
    "style-transfer": ("fast style transfer, 256px", style_transfer),
}


# --- the implementations of a sequence -------------------------------------

def _inputs(seq, dtype, rng):
    """One input per layer, and per-layer parameters (float32 for 16-bit data)."""
    from .bench import _param_dtype, _rand
    pdt = _param_dtype(dtype)
    out = []
    for n in seq:
        C = n.features
        p = {"w": (1 + 0.1 * rng.standard_normal(C)).astype(pdt),
             "b": (0.1 * rng.standard_normal(C)).astype(pdt)}
        if n.kind == "bn":
            p["rm"] = (0.1 * rng.standard_normal(C)).astype(pdt)
            p["rv"] = rng.uniform(0.5, 1.5, C).astype(pdt)
        out.append((_rand(rng, n.shape, dtype), p))
    return out


def _fastnorm_seq(seq, data):
    import fastnorm
    calls = []
    for n, (x, p) in zip(seq, data):
        dt = p["w"].dtype
        if n.kind == "bn":
            layer = fastnorm.BatchNorm2d(n.features, eps=n.eps, dtype=dt)
            layer.running_mean[...], layer.running_var[...] = p["rm"], p["rv"]
        elif n.kind == "in":
            layer = fastnorm.InstanceNorm2d(n.features, eps=n.eps, affine=True, dtype=dt)
        elif n.kind == "ln":
            layer = fastnorm.LayerNorm(n.features, eps=n.eps, dtype=dt)
        elif n.kind == "rms":
            layer = fastnorm.RMSNorm(n.features, eps=n.eps, dtype=dt)
        else:
            layer = fastnorm.GroupNorm(n.groups, n.features, eps=n.eps, dtype=dt)
        layer.weight[...] = p["w"]
        if layer.bias is not None:
            layer.bias[...] = p["b"]
        layer.eval()
        calls.append((layer, x))

    def run(keep=False):
        if keep:
            return [layer(x) for layer, x in calls]
        for layer, x in calls:
            layer(x)        # the output is consumed (freed) as in a model
    return run


def _torch_seq(seq, data):
    import torch
    from .bench import _to_torch
    calls = []
    for n, (x, p) in zip(seq, data):
        dt = getattr(torch, p["w"].dtype.name)
        if n.kind == "bn":
            m = torch.nn.BatchNorm2d(n.features, eps=n.eps, dtype=dt)
        elif n.kind == "in":
            m = torch.nn.InstanceNorm2d(n.features, eps=n.eps, affine=True, dtype=dt)
        elif n.kind == "ln":
            m = torch.nn.LayerNorm(n.features, eps=n.eps, dtype=dt)
        elif n.kind == "rms":
            m = torch.nn.RMSNorm(n.features, eps=n.eps, dtype=dt)
        else:
            m = torch.nn.GroupNorm(n.groups, n.features, eps=n.eps, dtype=dt)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(p["w"]))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(torch.from_numpy(p["b"]))
            if n.kind == "bn":
                m.running_mean.copy_(torch.from_numpy(p["rm"]))
                m.running_var.copy_(torch.from_numpy(p["rv"]))
        m.eval()
        calls.append((m, _to_torch(x)))

    def run(keep=False):
        with torch.no_grad():
            if keep:
                return [m(x) for m, x in calls]
            for m, x in calls:
                m(x)
    return run


def _ort_seq(seq, data, threads):
    """One graph with every norm node, or None (with a note) when this ONNX
    Runtime cannot build it."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    x0 = data[0][0]
    if x0.dtype.name == "bfloat16":
        return None
    elem = helper.np_dtype_to_tensor_dtype(x0.dtype)
    nodes, inputs, outputs, inits, feed = [], [], [], [], {}
    for i, (n, (x, p)) in enumerate(zip(seq, data)):
        xi, yi = f"x{i}", f"y{i}"
        pv = {k: np.asarray(v).astype(x.dtype) for k, v in p.items()}
        names = {k: f"{k}{i}" for k in pv}
        inits += [numpy_helper.from_array(np.ascontiguousarray(v), names[k])
                  for k, v in pv.items()]
        if n.kind == "bn":
            nodes.append(helper.make_node("BatchNormalization",
                                          [xi, names["w"], names["b"], names["rm"],
                                           names["rv"]], [yi], epsilon=n.eps))
        elif n.kind == "in":
            nodes.append(helper.make_node("InstanceNormalization",
                                          [xi, names["w"], names["b"]], [yi], epsilon=n.eps))
        elif n.kind == "ln":
            nodes.append(helper.make_node("LayerNormalization",
                                          [xi, names["w"], names["b"]], [yi], axis=-1,
                                          epsilon=n.eps))
        elif n.kind == "rms":
            nodes.append(helper.make_node("SimplifiedLayerNormalization", [xi, names["w"]],
                                          [yi], axis=-1, epsilon=n.eps))
        else:
            nodes.append(helper.make_node("GroupNormalization",
                                          [xi, names["w"], names["b"]], [yi],
                                          num_groups=n.groups, epsilon=n.eps))
        inputs.append(helper.make_tensor_value_info(xi, elem, x.shape))
        outputs.append(helper.make_tensor_value_info(yi, elem, x.shape))
        feed[xi] = x
    graph = helper.make_graph(nodes, "fastnorm_models", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so,
                                    providers=["CPUExecutionProvider"])
        # inputs and outputs bound to NumPy buffers: no copies, no allocation
        io = sess.io_binding()
        keep = []
        for i, (x, _) in enumerate(data):
            io.bind_cpu_input(f"x{i}", x)
            y = np.empty_like(x)
            keep.append(y)
            io.bind_output(f"y{i}", "cpu", 0, x.dtype, x.shape, y.ctypes.data)
        sess.run_with_iobinding(io)
    except Exception as e:  # noqa: BLE001 - an op this ORT lacks: peer not run
        print(f"note: onnxruntime cannot run this sequence: {str(e).splitlines()[0][:120]}",
              file=sys.stderr)
        return None

    def run(keep_=False):
        sess.run_with_iobinding(io)
        return keep
    return run


def _agreement(fns):
    """Largest difference of each peer's outputs from fastnorm's, over the
    whole sequence (noted on stderr above 1e-2: 16-bit rounding and eps
    conventions stay well below)."""
    from .bench import _result_array
    ref = [_result_array(y) for y in fns["fastnorm"](True)]
    diffs = {}
    for peer, f in fns.items():
        if peer == "fastnorm":
            continue
        got = [_result_array(y) for y in f(True)]
        d = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got))
        diffs[peer] = d
        if not d < 1e-2:
            print(f"note: {peer} differs from fastnorm by {d:.3g}", file=sys.stderr)
    return diffs


def run(names, threads, dtype, repeat, min_time, peers, out=sys.stdout, records=None):
    """Time each named model's sequence at each thread count; print a table."""
    import threadpoolctl

    from .bench import measure
    torch = None
    if "torch" in peers:
        try:
            import torch
        except ImportError:
            peers = [p for p in peers if p != "torch"]
    cols = f"{'model':<30} {'calls':>5} {'thr':>3} {'fastnorm ms':>11} {'us/call':>8}"
    for p in peers:
        cols += f" {p + ' ms':>14} {'vs ' + p:>15}"
    print(cols + "\n" + "-" * len(cols), file=out, flush=True)
    rng = np.random.default_rng(0)
    for name in names:
        title, make = MODELS[name]
        seq = make()
        data = _inputs(seq, dtype, rng)
        for t in threads:
            with threadpoolctl.threadpool_limits(limits=t, user_api="openmp"):
                if torch is not None:
                    was = torch.get_num_threads()
                    torch.set_num_threads(t)
                try:
                    fns = {"fastnorm": _fastnorm_seq(seq, data)}
                    if "torch" in peers:
                        fns["torch"] = _torch_seq(seq, data)
                    if "onnxruntime" in peers:
                        f = _ort_seq(seq, data, t)
                        if f is not None:
                            fns["onnxruntime"] = f
                    diffs = _agreement(fns)
                    res = measure(fns, repeat, min_time)
                finally:
                    if torch is not None:
                        torch.set_num_threads(was)
            fn = res["fastnorm"]["median_s"]
            line = (f"{title:<30} {len(seq):>5} {t:>3} {fn * 1e3:>11.3f} "
                    f"{fn * 1e6 / len(seq):>8.1f}")
            for p in peers:
                r = res.get(p)
                line += (f" {r['median_s'] * 1e3:>14.3f} {r['median_s'] / fn:>14.2f}x" if r
                         else f" {'-':>14} {'-':>15}")
            print(line, file=out, flush=True)
            if records is not None:
                records.append({"model": name, "title": title, "calls": len(seq),
                                "threads": t, "dtype": np.dtype(dtype).name, "results": res,
                                "max_abs_diff_vs_fastnorm": diffs})
    print(f"\nms: median time of the model's whole norm sequence ({repeat} interleaved "
          "samples); us/call: fastnorm's per layer call; vs PEER: PEER median / "
          "fastnorm median (>1: fastnorm is faster)", file=out)
