"""The thinking reward model: the endpoint a run uses (URL, served actor, built-in server) and `train-rm`."""
