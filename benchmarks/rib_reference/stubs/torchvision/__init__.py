"""Stand-in for torchvision (no CPU build matches torch 2.13 here). rib imports it only for its
vision datasets, which the language-model harness never loads."""


class _Missing:
    def __getattr__(self, name):
        raise RuntimeError(f"torchvision stub: torchvision.*.{name} is not available")


datasets = _Missing()
transforms = _Missing()
