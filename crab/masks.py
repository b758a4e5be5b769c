"""Frame masks that remember their lengths on the host.

``pack_padded_sequence`` (the GRU of ``crab.modules.UnimodalBlock``) takes the
lengths on the CPU. Counting a CUDA mask's True positions there (``mask.sum(1).cpu()``)
makes the host wait, in the middle of the forward pass, for everything queued before
it (the encoders). The encoders know the lengths on the host already (SpeechBrain's
relative lengths, the tokenizer's attention mask), so their masks carry them:
``device_mask`` builds a mask on the device from host lengths and keeps them, and
``host_lengths`` returns them, or counts (one device-to-host copy) for a mask made
elsewhere. The feature cache's masks are made from the loader's lengths, on the host.
"""

import torch


def to_device(tensor, device):
    """A host tensor on ``device`` without the host waiting for the device: a copy from
    pageable memory waits for the work queued before it, one from pinned memory does not.
    Traced by torch.compile, the copy is the compiled graph's own (dynamo cannot trace
    ``pin_memory``)."""
    device = torch.device(device)
    if pins_first(device):
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def pins_first(device):
    """Whether ``to_device`` pins the host tensor before copying it to ``device``."""
    return device.type == "cuda" and not torch.compiler.is_compiling()


def device_mask(lengths, max_len, device):
    """Boolean ``(batch, max_len)`` mask on ``device``, True where ``position < length``,
    from host (CPU) ``lengths``, which it keeps as ``mask.host_lengths``. The lengths are
    copied without waiting for the device."""
    lengths = lengths.detach().to("cpu", torch.long)
    on_device = to_device(lengths, device)
    mask = torch.arange(max_len, device=device).unsqueeze(0) < on_device.unsqueeze(1)
    mask.host_lengths = lengths
    return mask


def host_lengths(mask):
    """The number of True positions of each row of ``mask``, on the CPU: the lengths it
    was built from (``device_mask``), else counted."""
    lengths = getattr(mask, "host_lengths", None)
    return lengths if lengths is not None else mask.sum(dim=1).cpu()
