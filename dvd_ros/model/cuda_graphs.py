"""CUDA graph capture and replay of the model stages, per input shape.

A window of the 1.3B model launches thousands of small kernels (norms, adds, the
DiT's per-block elementwise work); on a small GPU or a Jetson-class CPU the launch
cost is a large part of the window. A robot node sees one window shape, so each stage
(VAE encode, DiT, VAE decode) is captured once per input shape and replayed: the
input is copied into the graph's static input buffer, the graph replays, the static
output is cloned out (so a caller may keep it across calls).

The graphs of one ``StageGraphs`` share one memory pool: they run one after another
on one stream and their outputs stay referenced, so a later graph may reuse the
intermediates of an earlier one. The pool holds the stages' peak memory for as long
as the graphs live; a new shape beyond ``max_shapes`` drops them all and starts over.
A stage that cannot be captured (an op that syncs with the host) runs eagerly, with
one warning.
"""

import logging

import torch

LOG = logging.getLogger('dvd_ros.cuda_graphs')


class StageGraphs:
    """Capture-once, replay-after cache of stage functions keyed by input shape and dtype."""

    def __init__(self, device, max_shapes=4, warmup=1):
        """Prepare an empty cache on CUDA ``device``.

        :param device: the CUDA ``torch.device`` the stages run on.
        :param max_shapes: distinct (stage, shape, dtype) graphs kept before all are dropped.
        :param warmup: eager runs on a side stream before capture (lazy inits, autotuning).
        """
        self.device = torch.device(device)
        self.max_shapes = max_shapes
        self.warmup = warmup
        self.graphs = {}
        self.eager = set()
        self.pool = None

    def clear(self):
        """Drop every captured graph and its memory pool."""
        self.graphs.clear()
        self.pool = None

    def run(self, name, fn, x):
        """Return ``fn(x)``, replayed from a graph captured for ``x``'s shape and dtype.

        :param name: the stage's name (part of the key).
        :param fn: tensor -> tensor, without host synchronisation.
        :param x: input on ``device``.
        """
        key = (name, tuple(x.shape), x.dtype)
        if key in self.eager:
            return fn(x)
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_shapes:
                self.clear()
            try:
                entry = self._capture(fn, x)
            except RuntimeError as exc:
                LOG.warning('CUDA graph capture of %s at %s failed (%s); running it eagerly',
                            name, tuple(x.shape), str(exc).splitlines()[0])
                self.eager.add(key)
                torch.cuda.synchronize(self.device)
                return fn(x)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, fn, x):
        static_in = x.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = fn(static_in)
        return graph, static_in, static_out
