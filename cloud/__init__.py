"""The cloud: network state, the corridor manager, routing kernels, plan dispatch."""
