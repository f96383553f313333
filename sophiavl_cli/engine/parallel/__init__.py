"""How ranks cooperate: the Ray cluster and placement, FSDP2 process groups and sharding, offload, weight sync, per-rank RNG."""

# The object store of the Ray a run starts on its machine (`cluster.connect`), here rather than in
# cluster.py so the pre-flight's /dev/shm check reads it without importing the worker side.
OBJECT_STORE_BYTES = 768 * 1024**2
