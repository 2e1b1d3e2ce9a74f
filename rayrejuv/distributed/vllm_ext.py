"""vLLM worker extension (runs inside vLLM's engine worker processes): load weights from a file."""

from __future__ import annotations


class WeightSync:
    """Mixed into vLLM's GPU/CPU worker through `worker_extension_cls`; `self` is the worker.
    Each tensor-parallel rank reads the full tensors and the model's load_weights shards them."""

    def rayrejuv_load_weights(self, path: str) -> int:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            weights = ((k, f.get_tensor(k)) for k in names)
            if hasattr(self, "reload_weights"):
                # The worker's in-place reload: it puts every layer back in checkpoint layout, loads,
                # then re-runs the post-load processing. A bare model.load_weights is not enough:
                # after loading, vLLM's CPU linears repack their weight for oneDNN/SGL kernels and
                # leave an empty parameter behind ("Attempted to load weight ... into parameter
                # (torch.Size([0]))"), and quantised GPU layers transform theirs likewise.
                self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
            else:  # older vLLM without reload_weights
                self.model_runner.model.load_weights(weights=weights)
        return len(names)
