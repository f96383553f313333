"""Multi-node placement without a second node: rank order, TP groups, rendezvous and forwarded env."""

from __future__ import annotations

import datetime

import pytest
import torch.distributed as dist

from sophiavl_cli.engine.parallel import fsdp
from sophiavl_cli.engine.parallel.cluster import forwarded_env, ranks_by_node
from sophiavl_cli.engine.rollout.vllm import tensor_parallel_groups_spanning_nodes


def test_ranks_are_given_out_node_by_node_whatever_order_ray_numbered_the_bundles():
    bundles = ["b", "a", "b", "a", "a", "b", "b", "a"]  # Ray interleaved two nodes
    order = ranks_by_node(bundles)
    assert sorted(order) == list(range(8))
    hosts = [bundles[b] for b in order]
    assert hosts == ["b"] * 4 + ["a"] * 4  # bundle 0's node first, so rank 0 stays where bundle 0 is
    assert tensor_parallel_groups_spanning_nodes(hosts, 2) == []
    assert tensor_parallel_groups_spanning_nodes(hosts, 4) == []
    assert tensor_parallel_groups_spanning_nodes(bundles, 2) == [[0, 1], [2, 3], [4, 5], [6, 7]]  # unordered


def test_a_tp_size_that_does_not_divide_the_workers_per_node_spans_nodes_and_is_named():
    hosts = ["a"] * 3 + ["b"] * 3
    assert tensor_parallel_groups_spanning_nodes(hosts, 2) == [[2, 3]]


def test_nccl_and_socket_settings_of_the_driver_reach_the_workers_and_nothing_else_does():
    env = {
        "NCCL_SOCKET_IFNAME": "eth0",
        "NCCL_IB_HCA": "mlx5",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "GLOO_SOCKET_IFNAME": "eth0",
        "HF_HOME": "/data/hf",
        "OPENAI_API_KEY": "secret",
        "PATH": "/usr/bin",
    }
    assert forwarded_env(env) == {k: env[k] for k in env if k not in ("OPENAI_API_KEY", "PATH")}


def test_rank_zero_keeps_its_store_port_bound_until_the_group_forms():
    store = fsdp.host_store(world_size=1)
    try:
        fsdp.init_process_group(0, 1, "127.0.0.1", store.port, "cpu", 30, store=store)
        assert dist.get_world_size() == 1
        with pytest.raises(RuntimeError):  # the port is taken: nobody can grab it in between
            dist.TCPStore("127.0.0.1", store.port, 1, is_master=True, timeout=datetime.timedelta(seconds=2))
        import os

        assert os.environ["LOCAL_RANK"] == "0"
    finally:
        fsdp.close_process_group()
