"""`--pretrained` where compute nodes have no network (the usual HPC case): the launcher, on the login node or
workstation it runs on, makes sure torchvision's weights file is in the torch hub cache that the ranks read,
downloading it there when it can, before anything is started or submitted. Ranks never download
(distrib/model.py reads the cache and refuses in one line if the file is not there).

The cache is torch.hub.get_dir()/checkpoints ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub):
on a cluster it must be on a filesystem the compute nodes share (set TORCH_HOME there if $HOME is not).
torch is imported only inside these functions: the URL comes from torchvision's weights enums.
"""

from __future__ import annotations

import os
import socket

from distrib.config import ConfigError

DOWNLOAD_TIMEOUT_S = 30  # a firewall that drops packets must not hang the launcher for minutes


def ensure_cached(arch: str, download: bool = True) -> str:
    """Where the weights are (a line for `distrain check`); fetched first if missing and `download`.
    ConfigError, naming the file, its URL and the cache path, when they are missing and cannot be fetched."""
    from distrib.weights import pretrained_file  # torch and torchvision: only with --pretrained

    url, path = pretrained_file(arch)
    if os.path.isfile(path):
        return f"{os.path.basename(path)} is in the torch hub cache ({os.path.dirname(path)})"
    if not download:
        raise ConfigError(f"--pretrained: {os.path.basename(path)} is not in the torch hub cache here "
                          f"({os.path.dirname(path)}); the launch will fetch {url} there")
    try:
        _download(url, path)
    except OSError as e:  # URLError, timeouts, DNS failures, a read-only cache folder ...
        reason = getattr(e, "reason", None) or e.strerror or e
        raise ConfigError(f"--pretrained needs {os.path.basename(path)} in the torch hub cache {os.path.dirname(path)}"
                          f", and it is not there and cannot be downloaded here ({reason}); download {url} where "
                          f"there is network and copy it to {path}") from None
    return f"{os.path.basename(path)} downloaded into the torch hub cache ({os.path.dirname(path)})"


def _download(url: str, path: str) -> None:
    """torch.hub's downloader: a temporary file, the sha256 prefix in the file name checked, then renamed."""
    import torch.hub

    os.makedirs(os.path.dirname(path), exist_ok=True)
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urlopen in torch.hub takes no timeout of its own
    try:
        torch.hub.download_url_to_file(url, path, match.group(1) if match else None, progress=True)
    finally:
        socket.setdefaulttimeout(previous)
