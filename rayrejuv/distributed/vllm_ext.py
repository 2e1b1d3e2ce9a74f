"""vLLM worker extension (runs inside vLLM's engine worker processes): load weights from a file."""

from __future__ import annotations


class WeightSync:
    """Mixed into vLLM's GPU/CPU worker through `worker_extension_cls`; `self.model_runner` is the
    worker's. Each tensor-parallel rank reads the full tensors and load_weights shards them."""

    def rayrejuv_load_weights(self, path: str) -> int:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            self.model_runner.model.load_weights(weights=((k, f.get_tensor(k)) for k in names))
        return len(names)
