"""Configuration of the Continual Memory model, with the paper's XLong settings as defaults."""

from __future__ import annotations

from dataclasses import dataclass, fields

from cmrec.baselines.common import check_sample_share
from cmrec.data.batch import DenseTargets
from cmrec.errors import ConfigError
from cmrec.heads.reason import READOUTS, RECURRENT_READOUTS, SLOT_EVIDENCE
from cmrec.memory.machine import memory_rows
from cmrec.memory.sketch import KEY_BITS


@dataclass(frozen=True)
class CMConfig:
    """Continual Memory hyper-parameters (paper §4.1 and §4.5, XLong).

    Args:
        item_dim: d_x, the item feature width (64).
        memory_dim: d_m, the slot width (64).
        model_dim: d_model, the attention / GRU width (64), divisible by `subspaces`.
        slots: K memory slots (20).
        segment_len: N items per segment (20).
        subspaces: Z GRU heads of the memory update (4); 1 is the single-head ablation.
        encoder_layers: segment encoder layers (3).
        decoder_layers: recall decoder layers (3).
        heads: attention heads of encoder and decoder (4).
        ffn_dim: feed-forward width of encoder and decoder layers. Not given in the paper; 4 x d_x
            as in the original Transformer.
        dropout: dropout in encoder and decoder layers. Not given in the paper; 0 by default,
            because on CPU drawing dropout masks costs about a quarter of a training step at
            L = 1,000 (measured with `cmrec bench`); 0.1 is the original Transformer's value.
        fragments: B history fragments per user for the recall losses (5).
        mask_ratio: masked share of a fragment (0.5).
        replace_ratio: replaced share of a negative fragment's unmasked items (0.5).
        sampled_items: contrastive candidates of L_item (200).
        hops: C attention hops of the reason head (1 for recommendation).
        lambda_item, lambda_seq, lambda_reason: loss weights (1.0, 0.5, 1.0).
        readout: the reason head's read-out, "linear" (the paper's) or "match" (cmrec's: an MLP
            over candidate x memory interactions; see `cmrec.heads.reason`).
        dense_per_segment: dense supervision (not in the paper: 0, off): clicks of each segment
            after the first that the memory before that segment scores against sampled
            negatives, besides the sample's own target; ``segment_len`` or more takes every click.
        dense_last_segments: only the last m segments of a history give dense targets (0: all).
        dense_horizon: 1 scores each dense target with the memory just before its segment; h > 1
            with one of the last h memories before it (uniformly), 0 with any earlier memory, so
            that the memory is also trained to hold what matters segments later.
        sample_share: with dense targets, the share of the reason loss carried by the samples
            (the target at the end of each history, where validation and test targets lie); the
            dense targets carry the rest. 0 (the default) lets every labelled target count once,
            so the samples weigh by their number (see `Batch.target_loss`).
        retention_init: 0 (PyTorch's default initialisation; the paper gives none), or a
            memory update initialised to keep what it holds: W_o = (W^M)^T orthogonal and the
            GRU update gates' bias raised by this value (see `MemoryUpdate`).
        slowest_write_rate: 1.0 (the paper: every slot is rewritten by each segment), or the
            write rate of the slowest slot: slot k keeps 1 - r_k of itself per segment, r_k
            log-spaced from 1 (slot 0) to this value, so slow slots keep old interests
            (see `MemoryUpdate`).
        history_mean: False (the paper), or two more memory rows that keep the exact mean of the
            whole history's item embeddings (per segment) and its segment count, read by the
            "match" head beside the slots: the slots still forget, the mean cannot (see
            `ContinualMemoryMachine`). Needs ``readout: match`` and item_dim == memory_dim.
        profile_rows: with ``history_mean``, P more memory rows holding an interest profile: the
            exact mean over the history of each segment's soft assignment of its items to P x d_m
            learned prototypes, read by the history mean's MLP as "how much of the history looks
            like this candidate" (see `ContinualMemoryMachine`, `cmrec.heads.reason`). 0: none.
        slot_evidence: with ``history_mean``, how the slots' logit joins the mean's: "signed"
            (added as it is) or "positive" (its softplus is added: the slots only add evidence
            for what they hold, so forgetting in the slots never counts against a candidate).
        lambda_mean: with ``history_mean``, the weight of a second reason loss on the history
            mean's logit alone (0: off), so that the mean path is a whole predictor by itself.
        recent_clicks: False (the paper: a target is scored from the memory alone), or the head
            also reads the clicks since the last whole segment (fewer than N: the store's pending
            clicks) with a `RecentReader` and adds its logit. The memory it is read beside is then
            the one after the last *whole* segment, in training and in serving alike (no partial
            segment is written at request time), so every target sees every click before it.
        recent_reader: with ``recent_clicks``, whether a `RecentReader` adds its logit (True), or
            the clicks since are only counted in the running means and run through the recurrent
            row (False).
        recurrent_state: False (the paper), or one more memory row holding a GRU state (hidden
            size d_m) run over every click on the raw item embeddings, read by GRU4REC's read-out as
            a third addend of the logit: the order of the latest clicks across segment boundaries,
            incremental per click (the store's pending clicks advance it at scoring time with
            ``recent_clicks``). Needs item_dim == memory_dim.
        recurrent_readout: with ``recurrent_state``, "own" (the row's read-out is an addend of
            its own, beside the slots'), "beside_mean" (its logit is added to the history mean's,
            which ``lambda_mean``'s loss then trains with it) or "with_mean" (its features join
            the history mean's MLP); the last two need ``history_mean``.
        count_buckets: 0 (off), or C entries (in ceil(C / d_m) memory rows, with ``history_mean``) of an exact
            count sketch in the memory: the share of the history whose category (item, on data
            without categories) is c, modulo C, read by the history mean's MLP as the candidate's
            share; exact when C is at least the number of categories.
        item_buckets: 0 (off), or C_i entries of each of the two tables of an item sketch, in the
            count rows beside the category sketch (ceil((C + 2 C_i) / d_m) rows in all, with
            ``history_mean``): a count-min sketch of the item ids, read by the history mean's MLP
            as how often the user clicked the candidate itself (`cmrec.memory.sketch`).
        recall_trains_embeddings: whether the recall losses' fragment inputs and contrastive
            candidates pass gradient to the item tables (the paper: True). False keeps L_item's
            item-identification pull off the tables; the recall losses still train the memory,
            the encoder and (through the memory) the tables.
    """

    item_dim: int = 64
    memory_dim: int = 64
    model_dim: int = 64
    slots: int = 20
    segment_len: int = 20
    subspaces: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    heads: int = 4
    ffn_dim: int = 256
    dropout: float = 0.0
    fragments: int = 5
    mask_ratio: float = 0.5
    replace_ratio: float = 0.5
    sampled_items: int = 200
    hops: int = 1
    lambda_item: float = 1.0
    lambda_seq: float = 0.5
    lambda_reason: float = 1.0
    readout: str = "linear"
    dense_per_segment: int = 0
    dense_last_segments: int = 0
    dense_horizon: int = 1
    sample_share: float = 0.0
    retention_init: float = 0.0
    slowest_write_rate: float = 1.0
    history_mean: bool = False
    profile_rows: int = 0
    slot_evidence: str = "signed"
    lambda_mean: float = 0.0
    recall_trains_embeddings: bool = True
    recent_clicks: bool = False
    recent_reader: bool = True
    recurrent_state: bool = False
    recurrent_readout: str = "own"
    count_buckets: int = 0
    item_buckets: int = 0

    def __post_init__(self) -> None:
        positive = (
            "item_dim memory_dim model_dim slots segment_len subspaces encoder_layers heads ffn_dim "
            "fragments sampled_items hops"
        ).split()
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"CMConfig.{name} must be a positive integer, got {value!r}")
        if self.decoder_layers < 1 and self.uses_recall:
            raise ConfigError("CMConfig.decoder_layers must be >= 1 when a recall loss is on")
        if self.model_dim % self.subspaces:
            raise ConfigError(
                f"CMConfig.model_dim ({self.model_dim}) must be divisible by subspaces ({self.subspaces})"
            )
        if self.item_dim % self.heads:
            raise ConfigError(
                f"CMConfig.item_dim ({self.item_dim}) must be divisible by heads ({self.heads})"
            )
        for name in ("mask_ratio", "replace_ratio"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"CMConfig.{name} must be in (0, 1), got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"CMConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("lambda_item", "lambda_seq", "lambda_reason", "lambda_mean"):
            if getattr(self, name) < 0:
                raise ConfigError(f"CMConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.readout not in READOUTS:
            raise ConfigError(f"CMConfig.readout must be one of {READOUTS}, got {self.readout!r}")
        for name in (
            "dense_per_segment",
            "dense_last_segments",
            "dense_horizon",
            "profile_rows",
            "count_buckets",
            "item_buckets",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"CMConfig.{name} must be an integer >= 0, got {value!r}")
        check_sample_share("CMConfig", self.sample_share)
        if self.retention_init < 0:
            raise ConfigError(f"CMConfig.retention_init must be >= 0, got {self.retention_init}")
        if not 0.0 < self.slowest_write_rate <= 1.0:
            raise ConfigError(f"CMConfig.slowest_write_rate must be in (0, 1], got {self.slowest_write_rate}")
        if self.history_mean and (self.readout != "match" or self.item_dim != self.memory_dim):
            raise ConfigError(
                "CMConfig.history_mean needs readout: match and item_dim == memory_dim, got "
                f"readout {self.readout!r}, item_dim {self.item_dim}, memory_dim {self.memory_dim}"
            )
        if self.slot_evidence not in SLOT_EVIDENCE:
            raise ConfigError(
                f"CMConfig.slot_evidence must be one of {SLOT_EVIDENCE}, got {self.slot_evidence!r}"
            )
        if self.profile_rows and not self.history_mean:
            raise ConfigError("CMConfig.profile_rows needs history_mean: true (it sits beside the mean)")
        if self.count_buckets and not self.history_mean:
            raise ConfigError(
                f"CMConfig.count_buckets ({self.count_buckets}) needs history_mean: true (the sketch is "
                "kept like the mean); set count_buckets: 0 without it"
            )
        if self.item_buckets and not self.history_mean:
            raise ConfigError(
                f"CMConfig.item_buckets ({self.item_buckets}) needs history_mean: true (the sketch is "
                "kept like the mean); set item_buckets: 0 without it"
            )
        if self.count_buckets >= 1 << KEY_BITS:
            raise ConfigError(
                f"CMConfig.count_buckets must be below {1 << KEY_BITS}, got {self.count_buckets}"
            )
        if self.recurrent_state and self.item_dim != self.memory_dim:
            raise ConfigError(
                "CMConfig.recurrent_state needs item_dim == memory_dim, got "
                f"{self.item_dim} and {self.memory_dim}"
            )
        if self.recurrent_readout not in RECURRENT_READOUTS:
            raise ConfigError(
                f"CMConfig.recurrent_readout must be one of {RECURRENT_READOUTS}, "
                f"got {self.recurrent_readout!r}"
            )
        if self.recurrent_state and self.recurrent_readout != "own" and not self.history_mean:
            raise ConfigError(
                f"CMConfig.recurrent_readout {self.recurrent_readout!r} needs history_mean: true"
            )
        if self.lambda_reason == 0:
            raise ConfigError("CMConfig.lambda_reason must be > 0: the CTR head is what CM is trained for")

    @property
    def dense_targets(self) -> DenseTargets | None:
        """What the training loader must add to each batch; None without dense supervision."""
        return DenseTargets.request(
            self.segment_len, self.dense_per_segment, self.dense_last_segments, self.dense_horizon
        )

    @property
    def memory_rows(self) -> int:
        """Rows of one user's stored memory: the K slots, the recurrent row, and the history-mean,
        profile and count-sketch rows, those that are on."""
        return memory_rows(
            self.slots,
            self.memory_dim,
            recurrent=self.recurrent_state,
            history_mean=self.history_mean,
            profile_rows=self.profile_rows,
            count_buckets=self.count_buckets,
            item_buckets=self.item_buckets,
        )

    @property
    def uses_recall(self) -> bool:
        return self.lambda_item > 0 or self.lambda_seq > 0

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
