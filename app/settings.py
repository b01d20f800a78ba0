"""Service configuration, read from `ATELIER_*` environment variables (and a `.env` file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATELIER_", env_file=".env", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP server.")
    devices: str = Field(
        "auto",
        description="Comma-separated torch devices to run workers on ('cuda:0,cuda:1', 'cpu');"
        " 'auto' takes every visible CUDA GPU, or the CPU when there is none.",
    )
    workers_per_device: int = Field(1, ge=1, le=16, description="Worker threads per device.")
    torch_threads: int = Field(
        1, ge=0,
        description="Intra-op threads of each CPU worker (0: torch's default). One keeps a"
        " seed's image bitwise equal in any batch and leaves a core to the HTTP stack.",
    )
    queue_size: int = Field(
        256, ge=1, description="Work items admitted but not finished; beyond it, 503."
    )
    max_batch_images: int = Field(
        64, ge=1, description="Most images one /generate forward pass may hold."
    )
    batch_wait_ms: float = Field(
        0.0, ge=0, description="How long a /generate worker waits for more work to fill a"
        " batch. 0: never; it takes whatever is queued at once, so batches form by themselves"
        " while the device is busy.",
    )
    max_images_per_request: int = Field(64, ge=1, le=1024, description="Upper bound of `n`.")
    request_timeout_s: float = Field(
        30.0, gt=0, description="Default deadline of a request (504 once passed)."
    )
    max_request_timeout_s: float = Field(
        300.0, gt=0, description="Largest deadline a client may ask for with X-Request-Timeout."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 503 when full.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On shutdown, how long accepted work may take to finish."
    )
    stylize_workers_per_device: int = Field(
        1, ge=1, le=8, description="Style-transfer workers per device (their own lane)."
    )
    max_active_jobs: int = Field(
        16, ge=1, description="Style jobs queued or running at once; beyond it, 503."
    )
    max_jobs: int = Field(
        256, ge=1, description="Jobs kept (finished ones included) before the oldest go."
    )
    job_ttl_s: float = Field(
        3600.0, gt=0, description="How long a finished job and its result are kept."
    )
    jobs_dir: Path = Field(
        PROJECT_ROOT / "var" / "jobs",
        description="Where the job store keeps its database and the jobs' results.",
    )
    job_store_url: str | None = Field(
        None, description="Redis URL (`redis://host:6379/0`) of a job store shared by every"
        " server: jobs, events, uploads and results live there, so any server answers for"
        " any job. None: the embedded store under `ATELIER_JOBS_DIR` (one server).",
    )
    interrupted_jobs: Literal["requeue", "fail"] = Field(
        "requeue", description="What start-up does with jobs that were queued or running when"
        " the previous process stopped: run them again, or mark them failed (`interrupted`).",
    )
    style_model: str = Field("vgg19-caffe", description="Network used by /stylize.")
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest /stylize request body (413 beyond)."
    )
    max_pixels: int = Field(
        40_000_000, ge=1, description="Largest uploaded image, in pixels (413 beyond)."
    )
    max_style_images: int = Field(4, ge=1, description="Most style images in one job.")
    max_size: int = Field(1024, ge=32, description="Largest `size` (output long side).")
    max_steps: int = Field(2000, ge=1, description="Largest `steps` of a style job.")
    default_size: int = Field(512, ge=16, description="`size` when a request gives none.")
    default_steps: int = Field(300, ge=1, description="`steps` when a request gives none.")
    style_batch_size: int = Field(
        0, ge=0, le=64,
        description="Style jobs of one output size optimised together (0: 8 on GPUs, 1 on CPU).",
    )
    style_bucket_px: int = Field(
        -1, ge=-1, description="Shape buckets: the short side of a style job's compute shape is"
        " padded up to a multiple of this many pixels (activations masked to the job's own"
        " region at every layer, the result cropped back), so jobs of similar aspect ratios"
        " share one shape, one batch and the device's tuned kernels; 0: every job at its"
        " natural shape; -1 (auto): 64 on GPUs, 0 on the CPU (no kernel tuning to share there,"
        " and padding costs compute).",
    )
    style_warmup: Literal["auto", "on", "off"] = Field(
        "auto", description="Before /readyz says ready, run every bucket shape of"
        " `ATELIER_DEFAULT_SIZE` at every batch size once, so no user pays the first-shape"
        " cost (kernel selection, allocations); `auto`: on GPUs only. Needs shape buckets"
        " (`ATELIER_STYLE_BUCKET_PX`): without them the shapes are not known in advance.",
    )
    style_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="Convolution precision of Adam style jobs (Gram and losses stay"
        " fp32); L-BFGS jobs always run fp32: bf16 gradient noise breaks its curvature pairs."
    )
    style_channels_last: bool = Field(
        False, description="Run style jobs' VGG in channels_last memory format."
    )
    style_cuda_graphs: bool = Field(
        True, description="On CUDA devices, capture a style batch's whole step (forward,"
        " backward, optimizer) in a CUDA graph once its jobs have not changed for two steps,"
        " and replay it until a job joins or leaves; no effect on the CPU.",
    )
    progress_every: int = Field(
        10, ge=1, description="Steps between progress events of a style job."
    )
    encode_threads: int = Field(2, ge=1, description="Threads that encode images (PNG/JPEG/…).")
    decode_threads: int = Field(
        1, ge=1, description="Threads that decode uploads (their own pool, so a burst of"
        " uploads never delays /generate's encoding).",
    )
    catalog_dir: Path = Field(
        PROJECT_ROOT / "models", description="Folder of model manifests (*.toml)."
    )
    model_dir: Path = Field(
        PROJECT_ROOT / "models" / "cache", description="Where pulled weights are stored."
    )
    default_model: str = Field("dcgan-faces-64", description="Model used when none is named.")
    log_format: Literal["json", "text"] = Field("json", description="Access/app log format.")
    log_level: str = Field("INFO", description="Python logging level.")
    allowed_hosts: str = Field(
        "auto", description="Comma-separated Host header values the server answers (others:"
        " 400), against DNS rebinding; `*` for any; `auto`: loopback names when bound to a"
        " loopback address, else any.",
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed to call the API from a browser (CORS);"
        " empty: none but the server's own pages. State-changing requests from any other site"
        " are refused (403).",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="Largest request head (request line and headers); 431"
        " beyond.",
    )
    head_timeout_s: float = Field(
        20.0, gt=0, description="Seconds a request line and its headers may take to arrive"
        " (408 beyond, and the connection closes): slow-loris clients cannot hold"
        " connections open.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Seconds a request body may go without a byte arriving while"
        " the server reads it (408 beyond, and the connection closes); a slow but moving"
        " upload is fine.",
    )
    api_keys: str = Field(
        "", description="Comma-separated API keys; when set (or `ATELIER_API_KEYS_FILE` is),"
        " every API request needs `Authorization: Bearer <key>` and a job is visible only to"
        " the key that made it. Empty: no access control.",
    )
    api_keys_file: Path | None = Field(
        None, description="A file with one API key per line (blank lines and `#` comments"
        " ignored), added to `ATELIER_API_KEYS`.",
    )
    admin_key: str = Field(
        "", description="Key that allows POST /models/reload from other hosts"
        " (`Authorization: Bearer <key>`, or `X-Admin-Key` when API keys are on); empty:"
        " loopback only.",
    )
    max_jobs_per_key: int = Field(
        4, ge=1, description="Style jobs one API key may have queued or running at once"
        " (429 + Retry-After beyond); only with API keys on.",
    )
    # Ray Serve (`atelier serve --backend ray`; deploy/serve.yaml for `serve deploy`).
    backend: Literal["local", "ray"] = Field(
        "local", description="`local`: one process drives this machine's devices. `ray`:"
        " Ray Serve deployments (an ingress running this app, one engine deployment per"
        " kind of work) on a Ray cluster.",
    )
    ray_address: str = Field(
        "", description="Ray cluster to join (`auto`: the one `ray start` runs here, or"
        " `ray://host:10001`); empty: start a local Ray instance.",
    )
    ray_proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs its HTTP proxies (on ATELIER_HOST and"
        " ATELIER_PORT): on every node, or on the head node only.",
    )
    ray_ingress_replicas: int = Field(
        1, ge=1, description="Replicas of the ingress (HTTP app) deployment. Above 1 needs"
        " ATELIER_JOB_STORE_URL: jobs are shared through Redis.",
    )
    ray_engine_replicas: int = Field(
        1, ge=1, description="Replicas of each engine deployment (generate, stylize) at"
        " start; each holds the models on its own device.",
    )
    ray_engine_max_replicas: int = Field(
        0, ge=0, description="Autoscaling: above ATELIER_RAY_ENGINE_REPLICAS, Serve adds"
        " engine replicas up to this many as their queues grow; 0: a fixed count.",
    )
    ray_engine_gpus: float = Field(
        -1.0, ge=-1.0, description="GPUs each engine replica reserves (`num_gpus`;"
        " fractions share a GPU); -1: 1 when the cluster has GPUs, else 0.",
    )
    ray_engine_resources: dict[str, float] = Field(
        {}, description="Custom Ray resources each engine replica needs,"
        " as JSON (`{\"gpu_node\": 1}`): pins engines to nodes started with"
        " `ray start --resources`.",
    )
    ray_max_replicas_per_node: int = Field(
        0, ge=0, description="Most replicas of one deployment (ingress or engine) on one"
        " node; 0: no limit (1 spreads the replicas over the nodes).",
    )
    ray_max_ongoing_requests: int = Field(
        64, ge=1, description="Requests one engine replica works on at once (its pool"
        " batches them); more wait in the handle's queue.",
    )
    ray_max_queued_requests: int = Field(
        256, ge=-1, description="Requests waiting for an engine replica, per ingress"
        " replica, before 503 + Retry-After; -1: no bound.",
    )

    def api_key_list(self) -> list[str]:
        """The configured API keys (ATELIER_API_KEYS and the lines of ATELIER_API_KEYS_FILE)."""
        keys = [k.strip() for k in self.api_keys.split(",") if k.strip()]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    keys.append(line)
        return keys

    def keys_required(self) -> bool:
        return bool(self.api_keys.strip()) or self.api_keys_file is not None

    def on_gpu(self) -> bool:
        return any(d.startswith("cuda") for d in self.device_list())

    def style_buckets(self) -> int:
        if self.style_bucket_px >= 0:
            return self.style_bucket_px
        return 64 if self.on_gpu() else 0

    def style_warmup_on(self) -> bool:
        return self.style_warmup == "on" or (self.style_warmup == "auto" and self.on_gpu())

    def style_batch(self) -> int:
        if self.style_batch_size:
            return self.style_batch_size
        return 8 if any(d.startswith("cuda") for d in self.device_list()) else 1

    def device_list(self) -> list[str]:
        """Resolve `devices` to concrete torch device strings."""
        if self.devices.strip().lower() != "auto":
            return [d.strip() for d in self.devices.split(",") if d.strip()]
        import torch

        if torch.cuda.is_available():
            return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return ["cpu"]
