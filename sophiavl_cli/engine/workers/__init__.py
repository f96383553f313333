"""The Ray worker actor (policy, reference, rollout engine, optimizer) and what runs inside it."""
