"""Ray Serve backend: the same app and services on a Ray cluster.

- `engine`: one Serve deployment per kind of work; each replica holds the models on its
  device and batches the requests that reach it with the local pool's scheduler.
- `remote`: `RemotePool`, the ingress's pool: it forwards work items to the engine
  deployments through Serve handles (progress streams back, cancellation goes through).
- `deployments`: the Serve application (ingress + engines) built from `Settings`.

Ray is imported only here, and only when the ray backend is chosen.
"""
