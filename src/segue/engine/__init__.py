"""Migration engine: the job's state machine and the progress model (pure), the job runner.

Errors: ``InvalidTransition`` (a bug: a job asked to move where its state machine forbids);
``MigrationFailed`` / ``MigrationCancelled`` end a job's run with a reason.
"""
