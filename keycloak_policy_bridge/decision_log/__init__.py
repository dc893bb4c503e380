"""Storage: the decision log (every decision, hash-chained) and the policy store.

``interfaces`` says what the rest of the bridge may rely on: ``DecisionLogWriter`` (``append``),
``DecisionLogReader`` (records as ``record.DecisionRecord``, of either record version) and
``PolicyStore`` (stored policies, sealed activations). ``Bridge``, replay, drift, explain and
the admin API depend on those, never on a backend.

Backends: ``sqlite`` (``SQLiteDecisionLog``: the writer, over ``sqlite_reader``'s
``SQLiteDecisionReader``) and ``policies`` (``SQLitePolicyStore``) share one
SQLite file, the embedded default; ``memory`` serves unit tests. Inside the SQLite backend:
``chain`` (the hash chain and the columns it covers), ``input_store`` (recorded inputs, stored
once each), ``integrity`` (``verify``), ``retention`` (``prune``), ``activations`` (sealing
policy activations), ``sqlitefile`` (what both stores share about the file) and ``upgrade``
(rewriting a log as ``kpb-decision/2`` into a new file: ``kpb decisions upgrade``).
"""

from keycloak_policy_bridge.decision_log.activations import (
    Activation,
    ActivationKeys,
    derived_activation_keys,
    insecure_dev_activation_keys,
)
from keycloak_policy_bridge.decision_log.interfaces import (
    Checkpoint,
    DecisionLog,
    DecisionLogReader,
    DecisionLogWriter,
    Nonce,
    PolicyStore,
    Query,
    UnreadableRecord,
    VerifyReport,
)
from keycloak_policy_bridge.decision_log.memory import InMemoryDecisionLog, InMemoryPolicyStore
from keycloak_policy_bridge.decision_log.policies import SQLitePolicyStore
from keycloak_policy_bridge.decision_log.sqlite import SQLiteDecisionLog
from keycloak_policy_bridge.decision_log.sqlite_reader import SQLiteDecisionReader

__all__ = [
    "Activation",
    "ActivationKeys",
    "Checkpoint",
    "DecisionLog",
    "DecisionLogReader",
    "DecisionLogWriter",
    "InMemoryDecisionLog",
    "InMemoryPolicyStore",
    "Nonce",
    "PolicyStore",
    "Query",
    "SQLiteDecisionLog",
    "SQLiteDecisionReader",
    "SQLitePolicyStore",
    "UnreadableRecord",
    "VerifyReport",
    "derived_activation_keys",
    "insecure_dev_activation_keys",
]
