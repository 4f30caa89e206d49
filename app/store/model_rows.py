"""A `models` row from the facts `gkd.models.teacher.describe_teacher` read off a model directory: one builder for
the registry (imports, uploads) and for the teachers that finetune jobs make (app.store.finetuned)."""

from __future__ import annotations

from app.store.orm import TeacherModel, utcnow


def model_row(model_id: str, tenant_id: str | None, name: str, path: str, source: str, info: object) -> TeacherModel:
    return TeacherModel(
        id=model_id,
        tenant_id=tenant_id,
        name=name,
        path=path,
        source=source,
        task=info.task,  # type: ignore[attr-defined]
        model_type=info.model_type,  # type: ignore[attr-defined]
        labels=list(info.labels),  # type: ignore[attr-defined]
        num_layers=info.num_layers,  # type: ignore[attr-defined]
        hidden_size=info.hidden_size,  # type: ignore[attr-defined]
        num_parameters=info.num_parameters,  # type: ignore[attr-defined]
        vocab_size=info.vocab_size,  # type: ignore[attr-defined]
        family=info.family,  # type: ignore[attr-defined]
        num_attention_heads=info.num_attention_heads,  # type: ignore[attr-defined]
        max_position_embeddings=info.max_position_embeddings,  # type: ignore[attr-defined]
        embedding_size=info.embedding_size,  # type: ignore[attr-defined]
        created_at=utcnow(),
    )
