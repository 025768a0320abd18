"""The engine: the one decision path, the same for one node and for a cluster.

Every action a client or the REST API takes goes through here. The hub records it locally and
says what changed on this node; the engine asks the cluster state what it means for the
deployment (first/last member, occupied/vacated, online/offline, quota), then announces it
once: frames to local sockets, the same frames on the bus for the other nodes, happenings to
the webhooks. A single node is the case where the broker, state and liveness are the memory
backend; nothing here knows which backend it has.

The parts, each with its job and guarantees in its docstring:
- `decisions`: the `Engine` and its write path (connect, disconnect, subscribe, unsubscribe,
  publish, sign-in/out, send_to_user, terminate, app changes);
- `announce`: what a decision means for this node's sockets, the other nodes, the webhooks;
- `link`: the cluster link: health, the store-call wrapper, bus publishing, the operation
  gate, heartbeat, resync, reaping and the redo queue;
- `routing`: topic tracking, and what a message from another node means for this node;
- `recovery`: channel history and what a socket that opted in to positions recovers;
- `queries`: read-side figures, with their local fallbacks;
- `rates`: rate limits and the subscription_count throttle;
- `internal`: extensions' internal messages over the bus.
"""

from .decisions import Engine
from .internal import InternalHandler, InternalMessages
from .link import REDO_LIMIT, ClusterLink, Resyncing
from .rates import CountThrottle, RateKind
from .recovery import Recovery

__all__ = [
    "REDO_LIMIT",
    "ClusterLink",
    "CountThrottle",
    "Engine",
    "InternalHandler",
    "InternalMessages",
    "RateKind",
    "Recovery",
    "Resyncing",
]
