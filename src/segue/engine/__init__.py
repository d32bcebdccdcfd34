"""Migration engine: the job's phases and policy (pure), and the job itself behind ports.

``phases`` (the state machine), ``policy`` (Segue's decisions before the start, pure),
``course`` (its decisions on every sample, pure), ``prediction`` (the pre-copy model and its
correction from the passes, pure) and ``policies`` (the policy object a job is given),
``progress`` (QEMU's answers folded), ``ports`` (what a job
needs of the world: agents, a store, facts, a clock), ``job`` (one migration's run),
``context`` (its shared half and compensating steps), ``rollback`` (the stack of them),
``postcopy``, ``recovery`` (after a controller restart), ``control`` (a user's requests).
Nothing here imports the controller, the agent, HTTP or SQL.

Errors: ``InvalidTransition`` (a bug: a job asked to move where its state machine forbids);
``MigrationFailed`` / ``MigrationCancelled`` end a job's run with a reason; ``Conflict``
refuses a user's request the job cannot take (``control``); ``RollbackRefused`` past the
commit point (``rollback``).
"""
