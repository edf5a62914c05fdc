"""Fleets on Ray Serve (``autoglm cluster serve``, the ``cluster`` extra): replicas that each run
the engine, one OpenAI-compatible endpoint, autoscaling on ongoing requests, and requests of one
conversation routed to the replica that holds its prefix."""
