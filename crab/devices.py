"""Which torch device a run asks for, and why it cannot be used here: a CUDA device on a
machine without a GPU (or a CPU-only build of torch), an index past the last GPU, a name
torch does not know. Asked before a model is loaded or anything is written."""

import torch


def torch_device(device):
    """``device`` as torch names it: ``auto`` is ``cuda:0`` when there is a GPU, else ``cpu``;
    ``cuda`` is ``cuda:0``; any other name is kept."""
    device = str(device)
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return "cuda:0" if device == "cuda" else device


def _cuda_init_error():
    """torch's own reason, on a CUDA build, why it sees no GPU: no NVIDIA driver, a driver too old
    for the CUDA it was built with, ``CUDA_VISIBLE_DEVICES`` naming none. None on a CPU-only build."""
    if not torch.version.cuda:
        return None
    try:
        torch.cuda.init()
    except RuntimeError as err:
        return str(err).strip().split(". ")[0]  # the rest is a download page
    except Exception:  # a build without CUDA whose version says otherwise: nothing to add
        return None
    return None


def cuda_problem(device):
    """Why the CUDA device ``device`` cannot be used here, or None (also for any other device)."""
    device = str(device)
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        why = _cuda_init_error()
        return "no CUDA GPU is available" + (f" (torch: {why})" if why else "")
    try:
        index = torch.device(device).index
    except RuntimeError:
        return "not a device name (cuda or cuda:<index>)"
    count = torch.cuda.device_count()
    if index is not None and index >= count:
        return f"there are {count} CUDA GPU(s) here (cuda:0 to cuda:{count - 1})"
    return None


def device_problem(device):
    """Why the torch device ``device`` cannot be used here, or None: a CUDA device that is not
    there (``cuda_problem``), or a name torch does not know or this torch cannot use (``gpu``,
    ``mps`` without Metal)."""
    device = str(device)
    if device.startswith("cuda"):
        return cuda_problem(device)
    try:
        torch.empty(0, device=device)
    except (RuntimeError, ValueError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0][:160]
        return f"not a device this torch can use ({first})"
    return None


def bf16_without_tensor_cores(device):
    """Why bf16 autocast on ``device`` is slow, or None: a CUDA GPU older than Ampere (compute
    capability below 8.0) has no bf16 tensor cores, and torch runs bf16 there without them."""
    if not str(device).startswith("cuda") or torch.version.hip:
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if major >= 8:
        return None
    return (
        f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) has no bf16 tensor "
        "cores (they came with 8.0, Ampere): bf16 autocast runs without them, slower than fp16; "
        "fp16 (with its gradient scaler) is this GPU's mixed precision"
    )


def gpu_use():
    """For ``tools/install.sh`` where an NVIDIA GPU is present: one line saying whether this torch
    can use it, and what to install where it cannot."""
    problem = cuda_problem("cuda:0")
    if problem is None:
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"torch {torch.__version__} uses the GPU(s): {', '.join(names)}"
    if not torch.version.cuda:
        fix = "tools/install.sh --torch cuda installs the CUDA build"
    else:
        fix = (
            "install a torch built for the NVIDIA driver here into tools/venv (PyTorch's install "
            "page gives the pip command), then run tools/install.sh --torch keep"
        )
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"WARNING: torch {torch.__version__} ({build}) cannot use the NVIDIA GPU here: {problem}; {fix}"
