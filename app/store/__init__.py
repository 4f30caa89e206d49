"""The service's store: what the API routes and the worker share, below both (imports point worker -> app.store ->
gkd; the store imports nothing of the API).

settings   the one `Settings` of a process (environment, prefix GKD_)
db         engines, sessions, retries, migrations
orm        the tables
ids        generated ids
keys       API keys and tenants
events     a job's numbered events and the wake-up of its event streams
jobs       the job state machine: statuses, legal moves, claim, finish, cancel, hand back
job_config a job's `DistillConfig`: checked by the API, built for the worker
queue      the task names, the queues, the Celery producer, enqueueing after commit, the sweeper's re-enqueue
webhooks   a tenant's webhook endpoints (quota); webhook_outbox: deliveries written with their event, attempts;
           webhook_urls: which URLs may be targets; webhook_secrets: signing secrets, encrypted at rest
storage/   local directory, S3-compatible bucket, archive packing and extraction
"""
