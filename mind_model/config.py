"""The model's typed configuration, saved inside every checkpoint.

`ModelConfig` fixes every choice of the MIND model (docs/MODEL.md): the choices a user
makes (`ModelSettings`, which `train.TrainConfig` inherits, so the two never drift) and
what the data decides (vocabulary sizes, L);
`to_dict()` / `from_dict()` round-trip it through a checkpoint, and the
factories `youtube_dnn(cfg)` and `mind_1(cfg)` derive the paper's baselines
from a MIND config so that all three share vocabulary sizes and dimensions.

Vocabulary sizes count every id, padding (0) and unknown (1) included, i.e.
they are `max idx + 1` of the matching vocabulary. A size of 0 means the
feature is absent.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

POOLINGS = ("routing", "mean")
SAMPLERS = ("log_uniform", "popularity", "full")


@dataclass(frozen=True)
class ModelSettings:
    """The model choices a user makes (TrainConfig exposes exactly these, with these
    defaults); `ModelConfig` adds what comes from the data."""

    # --- sizes
    embed_dim: int = 64  # d: item embeddings, interest capsules and user vectors
    embed_init_std: float = 0.0  # std of id embeddings at init; 0 = embed_dim ** -0.5 (|row| ~ 1)
    tower_hidden: tuple[int, ...] = (256,)  # ReLU layers of the user tower; () = one linear map
    profile_dim: int = 16  # embedding size of each profile field (concatenated)
    # --- multi-interest extractor
    n_interests: int = 4  # K; the paper uses 3..5 (Amazon Books: 3)
    routing_iters: int = 3  # r
    routing_sigma: float = 1.0  # std of the initial routing logits
    routing_init_scale: float = 1.0  # S starts as this times the identity
    dynamic_interests: bool = True  # K'_u = max(1, min(K, floor(log2 |I_u|)))
    # added to floor(log2 |I_u|) before the clamp: 1 gives users with 2-3 behaviours two
    # interests, 4-7 three, ...; 0 = the paper's rule
    extra_interests: int = 0
    # --- label-aware attention
    pow_p: float = math.inf  # inf = hard attention (paper's best), 0 = uniform
    # --- sampled softmax
    n_neg: int = 1024  # negatives per step, shared by the whole batch
    sampler: str = "log_uniform"  # "log_uniform" (Zipf over rank), "popularity" or "full"
    logit_scale: float = 1.0  # multiplies u.e before the softmax (1 / temperature)
    # > 0: user and item vectors are L2-normalised (training, evaluation and export alike)
    # and the softmax sees logit_scale * cos(u, e) / cosine_temperature; 0 = inner product
    cosine_temperature: float = 0.0
    hist_dropout: float = 0.0  # dropout on the behaviour embeddings, training only (0 = off)
    # > 0: the user's interests come from their last `history_window` behaviours only (of
    # the L the data holds), in training, evaluation and export alike; 0 = all L
    history_window: int = 0

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.n_interests < 1 or self.routing_iters < 1:
            raise ValueError("n_interests and routing_iters must be >= 1")
        if self.pow_p < 0 or math.isnan(self.pow_p):
            raise ValueError(f"pow_p must be >= 0 (inf allowed), got {self.pow_p}")
        if min(self.embed_dim, self.n_neg, self.embed_init_std) < 0:
            raise ValueError("sizes must be >= 0")
        if not self.cosine_temperature >= 0:  # also rejects nan
            raise ValueError(f"cosine_temperature must be >= 0 (0 = off), "
                             f"got {self.cosine_temperature}")
        if self.extra_interests < 0:
            raise ValueError(f"extra_interests must be >= 0 (0 = the paper's K'_u), "
                             f"got {self.extra_interests}")
        if self.history_window < 0:
            raise ValueError(f"history_window must be >= 0 (0 = all L), "
                             f"got {self.history_window}")
        if not 0 <= self.hist_dropout < 1:
            raise ValueError(f"hist_dropout must be in [0, 1), got {self.hist_dropout}")
        # frozen: canonical values set once (a tuple, whatever sequence was given)
        object.__setattr__(self, "tower_hidden", tuple(int(h) for h in self.tower_hidden))

    @property
    def cosine_scores(self) -> bool:
        """Whether user and item vectors are L2-normalised (scores are cosines)."""
        return self.cosine_temperature > 0

    @property
    def softmax_scale(self) -> float:
        """What the training softmax multiplies a score by: logit_scale, over the
        temperature when scores are cosines."""
        return self.logit_scale / (self.cosine_temperature if self.cosine_scores else 1.0)


@dataclass(frozen=True)
class ModelConfig(ModelSettings):
    # --- from the data (0 = feature absent)
    n_items: int = 0  # item ids incl. 0 = padding, 1 = unknown
    n_categories: int = 0  # category ids, averaged into the item embedding
    n_brands: int = 0  # brand/shop ids, averaged into the item embedding
    # field -> size, e.g. {"gender": 5}; {} = no profile
    profile_vocab: dict[str, int] = field(default_factory=dict)
    max_len: int = 50  # L: behaviours kept per user (the last L before the target)
    # --- fixed by the variant
    pooling: str = "routing"  # "routing" = MIND (B2I routing); "mean" = YouTube DNN
    routing_seed: int = 0  # seed of the fixed initial logits used in eval mode

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pooling == "mean" and self.n_interests != 1:
            # mean pooling yields one vector; a config saying K=4 would misdescribe the run
            raise ValueError("pooling='mean' (YouTube DNN) needs n_interests=1; "
                             "use youtube_dnn(cfg)")
        if min(self.n_categories, self.n_brands, self.max_len) < 0:
            raise ValueError("sizes must be >= 0")
        if any(v < 0 for v in self.profile_vocab.values()):
            raise ValueError("profile vocabulary sizes must be >= 0")
        object.__setattr__(self, "profile_vocab",
                           {str(k): int(v) for k, v in self.profile_vocab.items() if int(v) > 0})

    @property
    def profile_fields(self) -> tuple[str, ...]:
        """Profile fields the model embeds, in a fixed order (the config's)."""
        return tuple(self.profile_vocab)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists, dicts, floats; pow_p may be inf) for a checkpoint."""
        d = dataclasses.asdict(self)
        d["tower_hidden"] = list(self.tower_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict`; unknown keys are an error so a mismatched checkpoint
        fails loudly."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "tower_hidden" in d:
            d["tower_hidden"] = tuple(d["tower_hidden"])
        if "pow_p" in d:
            d["pow_p"] = float(d["pow_p"])  # accepts "inf" from a JSON/YAML round trip
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def youtube_dnn(cfg: ModelConfig) -> ModelConfig:
    """YouTube DNN baseline: masked mean pooling of behaviours, one user vector."""
    return cfg.replace(pooling="mean", n_interests=1, dynamic_interests=False)


def mind_1(cfg: ModelConfig) -> ModelConfig:
    """MIND-1-interest: routing with K = 1 (every behaviour goes to the one capsule)."""
    return cfg.replace(pooling="routing", n_interests=1)
