"""How ranks cooperate: the Ray cluster and placement, FSDP2 process groups and sharding, offload, weight sync, per-rank RNG."""
