"""The memory one training process of a job needs, estimated from the models' shapes before anything is loaded.

The service admits a job only when this fits the worker's budget (`GKD_WORKER_MEMORY_BYTES`, docs/api.md): a job
that cannot fit failed after minutes of set-up before (issue 20 finding 7). Pure arithmetic, no torch, so the API
can call it on every job create. Everything is counted in fp32 (4 bytes), the worst case of every precision.

The peak of a run is the largest of its stages, on top of the process itself and the teacher's weights (kept
for the whole run):

    peak = RUNTIME_BYTES + teacher weights + max(cache build, student state + max(training, evaluation))
    cache build   = CACHE_BATCH_SIZE x teacher activations per example (one forward and backward: input gradients)
    student state = student weights + gradients and AdamW's two moments of the trainable weights (12 bytes each)
    training      = batch_size x student activations per example x (3 for double-backward methods, else 1)
    evaluation    = EVAL_BATCH_SIZE x student activations per example (one backward: saliency agreement)

Activations per example and layer follow Korthikanti et al. (2022, "Reducing activation recomputation") counted
in fp32: per token 4 x (9 H + 2 I + 2 a s) bytes (the layer's saved inputs of width H, the FFN's two of width I,
attention scores and probabilities per head over the s positions) plus a s bytes of dropout masks; the embeddings
add 4 x 4 E per token. A method with input-gradient terms (gradient_kd, gradient_kd_cls) differentiates a gradient
(`create_graph=True`): the first backward keeps a graph about as large as the forward's, and the second backward
runs over both, hence the factor 3.

Measured against the peak RSS of real CPU runs (`python -m benchmarks.memory_estimate`: fp32, a BERT teacher of
width 256 with 4 heads, a 2-layer student, max_length 256; RSS growth over the process after imports, 0.35 GiB,
against the estimate without RUNTIME_BYTES): a 4-layer teacher at batch 32, kd 1.7 GiB measured and 1.7 estimated,
gradient_kd 1.7 and 1.7; a 2-layer teacher at batch 48, gradient_kd 1.7 and 2.0, kd 1.6 and 0.91. An estimate, not
a bound (the last case is 0.7 GiB low): leave headroom in the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

FLOAT_BYTES = 4
RUNTIME_BYTES = 512 * 1024**2
"""The process itself: Python, torch and transformers loaded (0.35 GiB RSS measured on CPU), allocator slack."""
CACHE_BATCH_SIZE = 64
"""Examples per batch of the teacher-cache build (`gkd.training.teacher_cache.build_cache`)."""
EVAL_BATCH_SIZE = 64
"""Examples per batch of an evaluation (`gkd.evaluation.evaluate.evaluate_model`)."""
OPTIMISER_BYTES_PER_WEIGHT = 3 * FLOAT_BYTES
"""A trainable weight's gradient and AdamW's first and second moments."""
DOUBLE_BACKWARD_FACTOR = 3


@dataclass(frozen=True)
class EncoderShape:
    """What the estimate needs of an encoder: depth, widths, heads, table sizes and its classes."""

    layers: int
    hidden: int
    heads: int
    vocab: int
    positions: int
    embedding: int  # width of the input embeddings (ALBERT, ELECTRA: narrower than hidden)
    labels: int
    intermediate: int = 0  # FFN width; 0 means 4 x hidden, the families' convention

    @property
    def ffn(self) -> int:
        return self.intermediate or 4 * self.hidden


def layer_parameters(shape: EncoderShape) -> int:
    """One transformer layer: Q, K, V and output projections, the FFN's two matrices, two LayerNorms (with biases)."""
    h, i = shape.hidden, shape.ffn
    return 4 * h * h + 4 * h + 2 * h * i + i + h + 4 * h


def embedding_parameters(shape: EncoderShape) -> int:
    """Word, position and two token-type rows of width E, their LayerNorm, and E -> H when they differ."""
    e, h = shape.embedding, shape.hidden
    projection = e * h + h if e != h else 0
    return (shape.vocab + shape.positions + 2) * e + 2 * e + projection


def encoder_parameters(shape: EncoderShape) -> int:
    """The whole classifier: embeddings, layers, pooler and classification head."""
    head = shape.hidden * shape.hidden + shape.hidden + shape.hidden * shape.labels + shape.labels
    return embedding_parameters(shape) + shape.layers * layer_parameters(shape) + head


def with_inferred_ffn(shape: EncoderShape, parameters: int) -> EncoderShape:
    """`shape` with the FFN width its counted `parameters` imply (the registry stores no intermediate size): the
    layer formula solved for I. Kept at 4 x hidden when the count implies no sane width (shared layers: ALBERT)."""
    if shape.layers < 1 or parameters <= 0:
        return shape
    guess = EncoderShape(shape.layers, shape.hidden, shape.heads, shape.vocab, shape.positions, shape.embedding,
                         shape.labels, intermediate=1)
    outside_ffn = encoder_parameters(guess) - shape.layers * (2 * shape.hidden + 1)  # everything but I's terms
    ffn = (parameters - outside_ffn) // (shape.layers * (2 * shape.hidden + 1))
    if not 0 < ffn <= 16 * shape.hidden:
        return shape
    return EncoderShape(shape.layers, shape.hidden, shape.heads, shape.vocab, shape.positions, shape.embedding,
                        shape.labels, intermediate=int(ffn))


def activation_bytes_per_example(shape: EncoderShape, max_length: int) -> int:
    """Saved activations of one example of `max_length` tokens through the encoder (forward, for one backward)."""
    s, a = max_length, shape.heads
    per_token_layer = FLOAT_BYTES * (9 * shape.hidden + 2 * shape.ffn + 2 * a * s) + a * s
    per_token_embeddings = FLOAT_BYTES * 4 * shape.embedding
    return s * (shape.layers * per_token_layer + per_token_embeddings)


@dataclass(frozen=True)
class JobShape:
    """A job as the estimate sees it: its two encoders and what sizes its batches."""

    teacher: EncoderShape
    student: EncoderShape
    batch_size: int
    max_length: int
    input_gradients: bool  # the method has double-backward terms
    embeddings_trainable: bool = True
    teacher_parameters: int = 0  # counted in the teacher's weight files; the shape's count when larger


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part; `peak(batch)` and `largest_batch(budget)` answer the admission questions."""

    runtime: int
    teacher_weights: int
    cache_build: int
    student_weights: int
    optimiser: int
    per_example: int  # training activations of one example, the double-backward factor included
    evaluation: int = 0  # activations of one evaluation batch (EVAL_BATCH_SIZE examples, one backward)

    @property
    def fixed(self) -> int:
        """What training needs whatever the batch: the process, both models and the optimiser's state."""
        return self.runtime + self.teacher_weights + self.student_weights + self.optimiser

    @property
    def teacher_stage(self) -> int:
        """The peak while the teacher cache is built (before the student exists)."""
        return self.runtime + self.teacher_weights + self.cache_build

    @property
    def evaluation_stage(self) -> int:
        """The peak of an evaluation, whatever the training batch."""
        return self.fixed + self.evaluation

    def peak(self, batch_size: int) -> int:
        return max(self.teacher_stage, self.evaluation_stage, self.fixed + batch_size * self.per_example)

    def largest_batch(self, budget: int) -> int:
        """The largest batch size whose peak fits `budget`; 0 when not even one example does."""
        if max(self.teacher_stage, self.evaluation_stage, self.fixed + self.per_example) > budget:
            return 0
        return (budget - self.fixed) // self.per_example


def estimate_job_memory(job: JobShape) -> MemoryEstimate:
    """The memory of one training process of `job` (every data-parallel process holds as much)."""
    student = encoder_parameters(job.student)
    trainable = student if job.embeddings_trainable else student - embedding_parameters(job.student)
    factor = DOUBLE_BACKWARD_FACTOR if job.input_gradients else 1
    return MemoryEstimate(
        runtime=RUNTIME_BYTES,
        teacher_weights=FLOAT_BYTES * max(job.teacher_parameters, encoder_parameters(job.teacher)),
        cache_build=CACHE_BATCH_SIZE * activation_bytes_per_example(job.teacher, job.max_length),
        student_weights=FLOAT_BYTES * student,
        optimiser=OPTIMISER_BYTES_PER_WEIGHT * trainable,
        per_example=factor * activation_bytes_per_example(job.student, job.max_length),
        evaluation=EVAL_BATCH_SIZE * activation_bytes_per_example(job.student, job.max_length),
    )


def gib(count: int) -> str:
    """Bytes as GiB with one decimal (two below 1 GiB), for messages."""
    value = count / 1024**3
    return f"{value:.1f} GiB" if value >= 1 else f"{value:.2f} GiB"
